//! Reading profiles that may not pass `check`.

use ferroprof::pprof::Profile;

/// The string at index `i`, or `""` when there is none (as `Delta` reads
/// unchecked profiles).
pub fn string(p: &Profile, i: i64) -> &str {
    usize::try_from(i)
        .ok()
        .and_then(|i| p.string_table.get(i))
        .map_or("", String::as_str)
}

/// Every string index of `p`.
pub fn string_indexes(p: &Profile) -> Vec<i64> {
    let mut v = Vec::new();
    for vt in p.sample_type.iter().chain(&p.period_type) {
        v.extend([vt.r#type, vt.unit]);
    }
    for s in &p.sample {
        for l in &s.label {
            v.extend([l.key, l.str, l.num_unit]);
        }
    }
    for m in &p.mapping {
        v.extend([m.filename, m.build_id]);
    }
    for f in &p.function {
        v.extend([f.name, f.system_name, f.filename]);
    }
    v.extend(&p.comment);
    v.extend([p.drop_frames, p.keep_frames, p.default_sample_type]);
    v
}

/// Everything but the samples and tables, strings resolved: what `Delta`
/// keeps as it is.
pub fn header(p: &Profile) -> Vec<String> {
    let mut v = Vec::new();
    for vt in p.sample_type.iter().chain(&p.period_type) {
        v.push(format!("{}/{}", string(p, vt.r#type), string(p, vt.unit)));
    }
    v.push(format!("period type given: {}", p.period_type.is_some()));
    v.extend(p.comment.iter().map(|&c| string(p, c).to_owned()));
    for i in [p.drop_frames, p.keep_frames, p.default_sample_type] {
        v.push(string(p, i).to_owned());
    }
    for n in [p.time_nanos, p.duration_nanos, p.period] {
        v.push(n.to_string());
    }
    v
}
