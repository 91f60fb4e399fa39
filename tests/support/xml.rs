//! A small XML well-formedness checker for the SVGs the viewer and the demo
//! write: tags closed in order, one root, attributes quoted and unique,
//! entities valid, comments and CDATA closed. It returns the text of each
//! element so a test can look for the function names a flame graph should
//! show. (No XML crate is a dependency; this is all the tests need.)

// Each test binary uses its own part of this module.
#![allow(dead_code)]

/// Checks that `xml` is a well-formed XML document and returns the text
/// of every element that has some, entities decoded, as `(element, text)`
/// in document order; or says what is wrong and where.
pub fn xml_texts(xml: &str) -> Result<Vec<(String, String)>, String> {
    let mut rest = xml;
    let mut open: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut texts = Vec::new();
    let at = |rest: &str| xml.len() - rest.len();
    let until = |rest: &'_ str, end: &str| -> Result<usize, String> {
        rest.find(end)
            .ok_or_else(|| format!("{end:?} missing after byte {}", xml.len() - rest.len()))
    };
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("<?") {
            let end = until(r, "?>")?;
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix("<!--") {
            let end = until(r, "-->")?;
            if r[..end].contains("--") {
                return Err(format!("\"--\" inside the comment at byte {}", at(rest)));
            }
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("<![CDATA[") {
            if open.is_empty() {
                return Err(format!("CDATA outside the root at byte {}", at(rest)));
            }
            let end = until(r, "]]>")?;
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("<!DOCTYPE") {
            if roots > 0 {
                return Err(format!("DOCTYPE after the root at byte {}", at(rest)));
            }
            let end = until(r, ">")?;
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix("</") {
            let end = until(r, ">")?;
            let name = r[..end].trim_end();
            match open.pop() {
                Some(expected) if expected == name => {}
                other => return Err(format!("</{name}> at byte {} closes {other:?}", at(rest))),
            }
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix('<') {
            if open.is_empty() {
                roots += 1;
                if roots > 1 {
                    return Err(format!("a second root element at byte {}", at(rest)));
                }
            }
            let (name, r) = xml_name(r).ok_or_else(|| format!("bad tag at byte {}", at(rest)))?;
            let mut r = r;
            let mut attributes = Vec::new();
            loop {
                let trimmed = r.trim_start();
                let spaced = trimmed.len() < r.len();
                r = trimmed;
                if let Some(after) = r.strip_prefix("/>") {
                    r = after;
                    break;
                }
                if let Some(after) = r.strip_prefix('>') {
                    open.push(name);
                    r = after;
                    break;
                }
                if !spaced {
                    return Err(format!(
                        "no space before an attribute of <{name}> near byte {}",
                        at(r)
                    ));
                }
                let (attribute, after) = xml_name(r)
                    .ok_or_else(|| format!("bad attribute in <{name}> at byte {}", at(r)))?;
                if attributes.contains(&attribute) {
                    return Err(format!("<{name}> has {attribute} twice"));
                }
                attributes.push(attribute);
                let after = after.trim_start().strip_prefix('=').ok_or_else(|| {
                    format!("{attribute} of <{name}> has no value at byte {}", at(after))
                })?;
                let after = after.trim_start();
                let quote = after
                    .chars()
                    .next()
                    .filter(|&c| c == '"' || c == '\'')
                    .ok_or_else(|| format!("{attribute} of <{name}> is not quoted"))?;
                let value_len = until(&after[1..], &quote.to_string())?;
                let value = &after[1..1 + value_len];
                if value.contains('<') {
                    return Err(format!("'<' in {attribute} of <{name}>: {value:?}"));
                }
                decode_entities(value).map_err(|e| format!("{attribute} of <{name}>: {e}"))?;
                r = &after[1 + value_len + 1..];
            }
            rest = r;
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..end];
            match open.last() {
                None if text.trim().is_empty() => {}
                None => return Err(format!("text outside the root at byte {}", at(rest))),
                Some(element) => {
                    if text.contains("]]>") {
                        return Err(format!("\"]]>\" in text at byte {}", at(rest)));
                    }
                    let decoded =
                        decode_entities(text).map_err(|e| format!("at byte {}: {e}", at(rest)))?;
                    if !decoded.trim().is_empty() {
                        texts.push((element.to_string(), decoded));
                    }
                }
            }
            rest = &rest[end..];
        }
    }
    if let Some(element) = open.last() {
        return Err(format!("<{element}> is never closed"));
    }
    if roots != 1 {
        return Err("no root element".to_owned());
    }
    Ok(texts)
}

/// An XML name at the start of `s` (letters, digits, `_:.-`, not starting
/// with a digit, `.` or `-`), and what follows it.
pub fn xml_name(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || "_:.-".contains(c)))
        .unwrap_or(s.len());
    let name = &s[..end];
    let first = name.chars().next()?;
    if first.is_ascii_digit() || first == '.' || first == '-' {
        return None;
    }
    Some((name, &s[end..]))
}

/// `text` with its entities decoded, or the first one that is not XML's.
pub fn decode_entities(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| format!("a bare '&' in {text:?}"))?;
        let entity = &after[..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(decimal) = entity.strip_prefix('#') {
                    decimal.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{entity}; in {text:?}"))?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
