//! Arbitrary text as `/proc/self/cgroup`, through the container id parser
//! ([`ferroprof::fuzzing::container_id`]): the `Datadog-Container-ID`
//! header of every upload comes from it.
//!
//! Input: the bytes as UTF-8, invalid sequences replaced.
//!
//! Checked: it never panics, and an id it finds is in the text, the last
//! part of some line's cgroup path (less a `.scope` suffix and a
//! `docker-`-style prefix), and one of the shapes it accepts: 64 lowercase
//! hex digits, a UUID (8-4-4-4-12 lowercase hex digits), or an ECS task id
//! (32 lowercase hex digits, `-`, digits).

use ferroprof::fuzzing::container_id;

/// The target.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Some(id) = container_id(&text) else {
        return;
    };
    let hex = |s: &str| (s.bytes()).all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let uuid = id.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && id.split('-').all(hex);
    let ecs = id.split_once('-').is_some_and(|(task, n)| {
        task.len() == 32 && hex(task) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    });
    assert!(
        (id.len() == 64 && hex(&id)) || uuid || ecs,
        "{id:?} is no container id"
    );
    let found = text.lines().any(|line| {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            return false;
        };
        let last = path.rsplit('/').next().unwrap_or("");
        let last = last.strip_suffix(".scope").unwrap_or(last);
        last == id || last.ends_with(&format!("-{id}"))
    });
    assert!(
        found,
        "{id:?} is not the last part of a cgroup path in {text:?}"
    );
}
