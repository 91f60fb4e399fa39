//! Arbitrary `DD_*` environments through configuration resolution, as
//! `start()` does it with no builder option (through
//! [`ferroprof::fuzzing::resolve_env`], which starts nothing).
//!
//! Input: fields separated by NUL bytes (which no environment variable can
//! hold), taken in pairs `name`, `value`. A name that is one of
//! [`ENV_VARIABLES`] is that variable; any other picks one by its first
//! byte, modulo their number. Values are read as UTF-8, invalid sequences
//! replaced. A later pair for the same variable wins. So a seed reads like
//! `DD_SERVICE\0checkout\0DD_PROFILING_UPLOAD_TIMEOUT\01m30s`.
//!
//! Checked:
//!
//! - Resolution never panics, and neither do the results' `Display` and
//!   `Debug`.
//! - Every error is about a variable: an [`Error::Env`] names one of
//!   [`ENV_VARIABLES`] that is set, its `Display` shows the name, and the
//!   value it quotes is (part of) that variable's value; an
//!   [`Error::ApiKey`] names `DD_API_KEY`. Nothing else can fail with no
//!   builder options.
//! - The API key is never shown: with `DD_API_KEY` set, the error's
//!   `Display` and `Debug`, or the configuration's `Debug` and warnings,
//!   are exactly the same when the key is replaced by another of the same
//!   validity (letters and digits rotated, which keeps the length, the
//!   case and the blanks; or, for a key with none, a `~` appended). So no
//!   part of the key, of any length, shows; a key that happens to equal
//!   text shown anyway (`true`, `localhost`) does not count as a leak.

use std::collections::HashMap;

use ferroprof::fuzzing::{resolve_env, ENV_VARIABLES};
use ferroprof::Error;

/// The target.
pub fn run(data: &[u8]) {
    let vars = parse(data);
    let result = resolve_env(&|name: &str| vars.get(name).cloned());
    let shown = render(&result);
    if let Some(key) = vars.get("DD_API_KEY").filter(|k| !k.trim().is_empty()) {
        let other = match rotate(key) {
            rotated if rotated != *key => rotated,
            _ => format!("{key}~"),
        };
        let mut vars = vars.clone();
        vars.insert("DD_API_KEY", other);
        let again = render(&resolve_env(&|name: &str| vars.get(name).cloned()));
        assert!(
            shown == again,
            "the output depends on the API key's value:\n{shown}\n{again}"
        );
    }
    if let Err(e) = &result {
        check_error(e, &vars);
    }
}

/// The environment `data` describes.
pub fn parse(data: &[u8]) -> HashMap<&'static str, String> {
    let mut fields = data.split(|&b| b == 0);
    let mut vars = HashMap::new();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let variable = (ENV_VARIABLES.iter())
            .find(|v| v.as_bytes() == name)
            .copied()
            .unwrap_or_else(|| {
                let i = name.first().copied().unwrap_or(0);
                ENV_VARIABLES[usize::from(i) % ENV_VARIABLES.len()]
            });
        vars.insert(variable, String::from_utf8_lossy(value).into_owned());
    }
    vars
}

/// Everything a result shows.
fn render(result: &Result<String, Error>) -> String {
    match result {
        Ok(config) => config.clone(),
        Err(e) => format!("{e}\n{e:?}"),
    }
}

/// `key` with each ASCII letter and digit replaced by the next one of its
/// kind (`z` by `a`, `9` by `0`): as valid an API key as `key` is.
fn rotate(key: &str) -> String {
    let next = |c: char, first: u8, n: u8| char::from(first + (c as u8 - first + 1) % n);
    key.chars()
        .map(|c| match c {
            'a'..='z' => next(c, b'a', 26),
            'A'..='Z' => next(c, b'A', 26),
            '0'..='9' => next(c, b'0', 10),
            c => c,
        })
        .collect()
}

fn check_error(e: &Error, vars: &HashMap<&'static str, String>) {
    let shown = e.to_string();
    match e {
        Error::Env {
            variable, value, ..
        } => {
            assert!(
                ENV_VARIABLES.contains(variable),
                "unknown variable in {e:?}"
            );
            assert!(
                shown.contains(variable),
                "{shown:?} does not name {variable}"
            );
            let set = vars.get(variable);
            let set = set.unwrap_or_else(|| panic!("{e:?} is about a variable that is not set"));
            assert!(
                set.contains(value.as_str()),
                "{e:?} quotes a value that is not {variable}'s, {set:?}"
            );
        }
        Error::ApiKey { variable } => {
            assert_eq!(*variable, "DD_API_KEY", "{e:?}");
            assert!(
                shown.contains(variable),
                "{shown:?} does not name {variable}"
            );
        }
        _ => panic!("an environment alone gave {e:?}: {shown}"),
    }
}
