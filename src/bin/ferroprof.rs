//! `ferroprof`: a look at a pprof profile where Go's pprof is not at hand.
//!
//! ```text
//! ferroprof top FILE [--sample-index NAME] [-n N]
//! ferroprof flamegraph FILE -o OUT.svg [--sample-index NAME] [--title T]
//! ferroprof --help
//! ```
//!
//! A thin shell over [`ferroprof::view`], which does the work; this file
//! only parses arguments (by hand: three options do not need a parser
//! crate) and reports. It exits 0 on success, 1 when the profile cannot be
//! read, decoded or drawn or the output cannot be written (with the reason
//! on stderr), and 2 on a usage error.
//!
//! Built with the `cli` feature: `cargo install ferroprof --features cli`.

fn main() -> std::process::ExitCode {
    cli::main()
}

mod cli {
    use std::ffi::OsString;
    use std::io::{self, Write};
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use ferroprof::view::{self, ViewError};

    const SYNOPSIS: &str = "\
usage: ferroprof top FILE [--sample-index NAME] [-n N]
       ferroprof flamegraph FILE -o OUT.svg [--sample-index NAME] [--title T]
       ferroprof --help";

    const HELP: &str = "\
Looks at a pprof profile (ferroprof's, Go's, any producer's; gzipped or not).

Commands:
  top FILE            prints the functions with the most flat value, as
                      `pprof -top` does: flat, flat%, sum%, cum, cum%
  flamegraph FILE     draws the profile's stacks as an SVG flame graph

Options:
  --sample-index NAME the sample type to show: cpu, samples, inuse_space,
                      alloc_objects... (or its index). Default: the
                      profile's default sample type, else its last one
  -n N                top: how many functions to print (default 20)
  -o, --output FILE   flamegraph: where to write the SVG (required)
  --title T           flamegraph: the title (default: FILE and sample type)
  -h, --help          prints this help

Exit status: 0 on success, 1 if the profile cannot be read, decoded or
drawn, 2 on a usage error.";

    /// How many rows `top` prints without `-n`.
    const DEFAULT_ROWS: usize = 20;

    /// What the command line asks for.
    #[derive(Debug)]
    enum Command {
        Help,
        Top {
            file: PathBuf,
            sample_index: Option<String>,
            rows: usize,
        },
        Flamegraph {
            file: PathBuf,
            output: PathBuf,
            sample_index: Option<String>,
            title: Option<String>,
        },
    }

    /// Why the command did not succeed.
    enum Failure {
        /// The command line is wrong (exit status 2).
        Usage(String),
        /// The work failed (exit status 1).
        Run(String),
    }

    pub(crate) fn main() -> ExitCode {
        let result = parse(std::env::args_os().skip(1))
            .map_err(Failure::Usage)
            .and_then(run);
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(Failure::Usage(message)) => {
                eprintln!("ferroprof: {message}\n{SYNOPSIS}");
                ExitCode::from(2)
            }
            Err(Failure::Run(message)) => {
                eprintln!("ferroprof: {message}");
                ExitCode::from(1)
            }
        }
    }

    /// The command the arguments (without the program name) ask for, or
    /// what is wrong with them.
    fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
        let mut args = args.into_iter();
        let command = match args.next() {
            None => return Err("no command given".to_owned()),
            Some(arg) => arg
                .into_string()
                .map_err(|arg| format!("unknown command {arg:?}"))?,
        };
        let top = match command.as_str() {
            "-h" | "--help" | "help" => return Ok(Command::Help),
            "top" => true,
            "flamegraph" => false,
            other => return Err(format!("unknown command {other:?}")),
        };

        let mut file: Option<PathBuf> = None;
        let mut output: Option<PathBuf> = None;
        let mut sample_index: Option<String> = None;
        let mut title: Option<String> = None;
        let mut rows: Option<usize> = None;
        let mut only_files = false;
        while let Some(arg) = args.next() {
            let text = arg.to_str();
            let is_option = !only_files && text.is_some_and(|t| t.starts_with('-') && t != "-");
            if !is_option {
                if file.is_some() {
                    return Err(format!("unexpected argument {arg:?}: give one FILE"));
                }
                file = Some(arg.into());
                continue;
            }
            let text = text.unwrap_or_default();
            // `--name=value` or `--name value`.
            let (name, inline_value) = match text.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
                _ => (text, None),
            };
            let mut value = |what: &str| -> Result<OsString, String> {
                match inline_value.clone() {
                    Some(value) => Ok(value.into()),
                    None => args
                        .next()
                        .ok_or_else(|| format!("{name} needs a value: {what}")),
                }
            };
            let string = |value: OsString| {
                value
                    .into_string()
                    .map_err(|value| format!("{name} {value:?} is not UTF-8"))
            };
            match name {
                "-h" | "--help" => return Ok(Command::Help),
                "--" => only_files = true,
                "--sample-index" => {
                    let given = string(value("a sample type such as cpu or inuse_space")?)?;
                    set_once(&mut sample_index, given, name)?;
                }
                "-n" if top => {
                    let given = string(value("a number of rows")?)?;
                    let n = given.parse::<usize>().map_err(|_| {
                        format!("-n {given:?} is not a number of rows (0, 1, 2...)")
                    })?;
                    set_once(&mut rows, n, name)?;
                }
                "-o" | "--output" if !top => {
                    set_once(&mut output, value("the SVG file to write")?.into(), name)?;
                }
                "--title" if !top => {
                    let given = string(value("the flame graph's title")?)?;
                    set_once(&mut title, given, name)?;
                }
                _ => return Err(format!("unknown option {name:?} for {command}")),
            }
        }

        let file = file.ok_or_else(|| format!("{command} needs a profile FILE"))?;
        if top {
            Ok(Command::Top {
                file,
                sample_index,
                rows: rows.unwrap_or(DEFAULT_ROWS),
            })
        } else {
            Ok(Command::Flamegraph {
                file,
                output: output.ok_or("flamegraph needs -o OUT.svg")?,
                sample_index,
                title,
            })
        }
    }

    /// Sets an option's value, refusing a second one.
    fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), String> {
        if slot.replace(value).is_some() {
            return Err(format!("{name} is given twice"));
        }
        Ok(())
    }

    fn run(command: Command) -> Result<(), Failure> {
        match command {
            Command::Help => {
                print(&format!("{HELP}\n\n{SYNOPSIS}\n"));
                Ok(())
            }
            Command::Top {
                file,
                sample_index,
                rows,
            } => {
                let profile = view::load(&file).map_err(|e| Failure::Run(e.to_string()))?;
                let index = view::sample_index(&profile, sample_index.as_deref())
                    .map_err(|e| in_file(&file, e))?;
                print(&view::top(&profile, index).render(rows));
                Ok(())
            }
            Command::Flamegraph {
                file,
                output,
                sample_index,
                title,
            } => {
                let profile = view::load(&file).map_err(|e| Failure::Run(e.to_string()))?;
                let index = view::sample_index(&profile, sample_index.as_deref())
                    .map_err(|e| in_file(&file, e))?;
                let title = title.unwrap_or_else(|| {
                    let sample_type = profile.str(profile.sample_type[index].r#type);
                    format!("{} ({sample_type})", file.display())
                });
                // Drawn in memory first, so that a failure leaves no
                // half-written file behind.
                let mut svg = Vec::new();
                view::flamegraph(&profile, index, &title, &mut svg)
                    .map_err(|e| in_file(&file, e))?;
                std::fs::write(&output, svg)
                    .map_err(|e| Failure::Run(format!("cannot write {}: {e}", output.display())))
            }
        }
    }

    /// A failure about the profile in `file`.
    fn in_file(file: &Path, error: ViewError) -> Failure {
        Failure::Run(format!("{}: {error}", file.display()))
    }

    /// Writes `text` to stdout; a closed pipe (`ferroprof top x | head`)
    /// is not an error.
    fn print(text: &str) {
        let mut stdout = io::stdout().lock();
        if let Err(e) = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("ferroprof: writing to stdout: {e}");
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn parse_strs(args: &[&str]) -> Result<Command, String> {
            parse(args.iter().map(OsString::from))
        }

        #[test]
        fn top_takes_a_file_a_sample_index_and_a_row_count() {
            let Ok(Command::Top {
                file,
                sample_index,
                rows,
            }) = parse_strs(&["top", "cpu.pprof", "--sample-index", "samples", "-n", "5"])
            else {
                panic!("top with options")
            };
            assert_eq!(file, Path::new("cpu.pprof"));
            assert_eq!(sample_index.as_deref(), Some("samples"));
            assert_eq!(rows, 5);

            let Ok(Command::Top { rows, .. }) = parse_strs(&["top", "--sample-index=cpu", "x"])
            else {
                panic!("--name=value")
            };
            assert_eq!(rows, DEFAULT_ROWS);
        }

        #[test]
        fn flamegraph_needs_an_output() {
            let Ok(Command::Flamegraph { output, title, .. }) =
                parse_strs(&["flamegraph", "heap.pprof", "-o", "out.svg", "--title", "T"])
            else {
                panic!("flamegraph with options")
            };
            assert_eq!((output, title.as_deref()), ("out.svg".into(), Some("T")));
            assert_eq!(
                parse_strs(&["flamegraph", "heap.pprof"]).unwrap_err(),
                "flamegraph needs -o OUT.svg"
            );
        }

        #[test]
        fn mistakes_are_named() {
            let cases: &[(&[&str], &str)] = &[
                (&[], "no command given"),
                (&["show", "x"], "unknown command \"show\""),
                (&["top"], "top needs a profile FILE"),
                (
                    &["top", "a", "b"],
                    "unexpected argument \"b\": give one FILE",
                ),
                (&["top", "x", "-n"], "-n needs a value: a number of rows"),
                (
                    &["top", "x", "-n", "ten"],
                    "-n \"ten\" is not a number of rows (0, 1, 2...)",
                ),
                (&["top", "x", "-o", "y"], "unknown option \"-o\" for top"),
                (
                    &["flamegraph", "x", "-o", "a", "-o", "b"],
                    "-o is given twice",
                ),
                (
                    &["flamegraph", "x", "-n", "3"],
                    "unknown option \"-n\" for flamegraph",
                ),
            ];
            for (args, message) in cases {
                assert_eq!(parse_strs(args).unwrap_err(), *message, "{args:?}");
            }
            assert!(matches!(parse_strs(&["--help"]), Ok(Command::Help)));
            assert!(matches!(parse_strs(&["top", "x", "-h"]), Ok(Command::Help)));
            let Ok(Command::Top { file, .. }) = parse_strs(&["top", "--", "-odd-name"]) else {
                panic!("-- ends the options")
            };
            assert_eq!(file, Path::new("-odd-name"));
        }
    }
}
