//! What the check reads in README.md: the two-commands table, the curl block of "Publish an
//! image with curl", and those curl lines with a demo's values put in.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

/// The README's own values, which a demo's replace: the default API address, the default demo
/// directory (where the demo writes the request body), and what precedes a ticket's number.
const README_API: &str = "http://127.0.0.1:8080/api/";
const README_BODY: &str = "@.lab/demo/";
const TICKET_AT: &str = "$IMAGE/pimages/";

/// README.md's two commands and its curl lines.
#[derive(Debug)]
pub struct Readme {
    /// The table's command that runs the service with a demo cloud (`scripts/demo up`).
    pub demo_up: String,
    /// The table's test command (`scripts/test`): CI runs it; the check only finds it.
    pub test: String,
    pub curl: CurlBlock,
}

/// The curl block's commands, one logical line each (continuations joined, comments dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct CurlBlock {
    pub lines: Vec<String>,
}

/// A demo's values, put in for the README's.
pub struct Values<'a> {
    /// `http://127.0.0.1:PORT/api/`
    pub api: &'a str,
    /// The demo's directory (PIMAGE_DEMO_DIR), where it writes the request body.
    pub dir: &'a str,
    /// The image URI the demo printed.
    pub image: &'a str,
    /// The ticket's number from the POST's answer (`N` where the demo prints the commands).
    pub ticket: &'a str,
}

impl Readme {
    pub fn parse(text: &str) -> Result<Readme> {
        let (demo_up, test) = two_commands(section(text, "The two commands")?)?;
        let curl = CurlBlock::parse(section(text, "Publish an image with curl")?)?;
        Ok(Readme {
            demo_up,
            test,
            curl,
        })
    }

    /// Both commands name a program of the checkout (the test command is not run here: CI
    /// runs it, and this check runs inside it).
    pub fn check_programs(&self, root: &Path) -> Result<()> {
        for command in [&self.demo_up, &self.test] {
            let program = command.split_whitespace().next().unwrap_or_default();
            ensure!(
                root.join(program).is_file(),
                "README.md's command `{command}` names no program of the checkout"
            );
        }
        Ok(())
    }

    /// `scripts/demo down`: the demo command with `down` for `up`.
    pub fn demo_down(&self) -> Result<String> {
        match self.demo_up.strip_suffix(" up") {
            Some(program) => Ok(format!("{program} down")),
            None => bail!(
                "README.md's demo command `{}` does not end in ` up` (the check stops it with ` down`)",
                self.demo_up
            ),
        }
    }
}

impl CurlBlock {
    /// The section's first ```sh block: an `IMAGE=` line, a POST, a status poll, a JSON GET.
    fn parse(section: &str) -> Result<CurlBlock> {
        let block = section
            .split("```sh\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .context("README.md's `## Publish an image with curl` has no ```sh block")?;
        let block = CurlBlock {
            lines: logical_lines(block),
        };
        block.image_line()?;
        block.post()?;
        block.status()?;
        block.json_get()?;
        Ok(block)
    }

    pub fn image_line(&self) -> Result<&str> {
        self.find("`IMAGE=` line", |l| l.starts_with("IMAGE="))
    }

    pub fn post(&self) -> Result<&str> {
        self.find("curl POST", |l| {
            l.starts_with("curl ") && l.contains("-X POST")
        })
    }

    pub fn status(&self) -> Result<&str> {
        self.find("curl GET of …/status", |l| {
            l.starts_with("curl ") && l.ends_with("/status")
        })
    }

    pub fn json_get(&self) -> Result<&str> {
        self.find("curl GET with `Accept: application/json`", |l| {
            l.starts_with("curl ") && !l.contains("-X ") && l.contains("Accept: application/json")
        })
    }

    fn find(&self, what: &str, wanted: impl Fn(&str) -> bool) -> Result<&str> {
        self.lines
            .iter()
            .map(String::as_str)
            .find(|&l| wanted(l))
            .with_context(|| {
                format!("README.md's curl block (`## Publish an image with curl`) has no {what}")
            })
    }

    /// These lines with a demo's values put in.
    pub fn with(&self, v: &Values) -> CurlBlock {
        CurlBlock {
            lines: self.lines.iter().map(|l| put_in(l, v)).collect(),
        }
    }

    /// The block the demo printed (from its `IMAGE=` line to the next empty line) must be
    /// this one with the demo's values, so that the two cannot drift apart.
    pub fn check_printed(&self, printed: &str, v: &Values) -> Result<()> {
        let got = logical_lines(&printed_block(printed)?);
        let want = self.with(v).lines;
        if got != want {
            bail!(
                "the curl commands `scripts/demo up` printed are not README.md's \
                 (`## Publish an image with curl`) with the demo's values:\n\
                 printed:\n  {}\nREADME.md's, with the demo's values:\n  {}",
                got.join("\n  "),
                want.join("\n  ")
            );
        }
        Ok(())
    }
}

/// The image URI of the demo's printed `IMAGE=` line.
pub fn printed_image(printed: &str) -> Result<String> {
    let block = printed_block(printed)?;
    let image = block
        .trim_start()
        .strip_prefix("IMAGE=")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    ensure!(
        image.starts_with("users/") && image.contains("/images/"),
        "`scripts/demo up` printed `IMAGE={image}`, not an image URI (users/…/images/N)"
    );
    Ok(image.to_string())
}

fn printed_block(printed: &str) -> Result<String> {
    let lines: Vec<&str> = printed
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("IMAGE="))
        .take_while(|l| !l.trim().is_empty())
        .collect();
    ensure!(
        !lines.is_empty(),
        "`scripts/demo up` printed no `IMAGE=` line (the curl commands of README.md)"
    );
    Ok(lines.join("\n"))
}

/// The text under `## HEADING`, up to the next `## ` heading.
fn section<'a>(text: &'a str, heading: &str) -> Result<&'a str> {
    let marker = format!("\n## {heading}\n");
    let start = text
        .find(&marker)
        .with_context(|| format!("README.md has no section `## {heading}`"))?;
    let body = &text[start + marker.len()..];
    Ok(body.find("\n## ").map_or(body, |end| &body[..end]))
}

/// The table's demo command (its first column names the demo) and test command.
fn two_commands(section: &str) -> Result<(String, String)> {
    let rows: Vec<(String, String)> = section.lines().filter_map(table_row).collect();
    let find = |word: &str| {
        rows.iter()
            .find(|(what, _)| what.to_lowercase().contains(word))
            .map(|(_, command)| command.clone())
            .with_context(|| {
                format!(
                    "README.md's table under `## The two commands` has no row naming `{word}` \
                     with its command in backticks"
                )
            })
    };
    Ok((find("demo")?, find("test")?))
}

/// `| what | `command` |`: (what, command).
fn table_row(line: &str) -> Option<(String, String)> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    let cells: Vec<&str> = inner.split('|').map(str::trim).collect();
    let &[what, command] = cells.as_slice() else {
        return None;
    };
    let command = command.strip_prefix('`')?.strip_suffix('`')?;
    Some((what.to_string(), command.to_string()))
}

/// Shell lines as commands: `\`-continued lines joined, comment lines and trailing ` # …`
/// comments dropped, blanks made single (the README wraps its lines where the demo may not).
fn logical_lines(block: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines().map(str::trim) {
        if line.starts_with('#') && current.is_empty() {
            continue;
        }
        let line = line.split(" # ").next().unwrap_or(line);
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let command = current.split_whitespace().collect::<Vec<_>>().join(" ");
        if !command.is_empty() {
            commands.push(command);
        }
        current.clear();
    }
    commands
}

/// One README line with a demo's values: its API address, its directory for the body file,
/// its image URI, and the ticket's number after `$IMAGE/pimages/`.
fn put_in(line: &str, v: &Values) -> String {
    if line.starts_with("IMAGE=") {
        return format!("IMAGE={}", v.image);
    }
    let line = line
        .replace(README_API, v.api)
        .replace(README_BODY, &format!("@{}/", v.dir));
    let Some((head, tail)) = line.split_once(TICKET_AT) else {
        return line;
    };
    let rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    if rest.len() == tail.len() {
        return line;
    }
    format!("{head}{TICKET_AT}{}{rest}", v.ticket)
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = include_str!("../../../README.md");

    /// What `scripts/demo up` prints (its closing heredoc) for a demo on port 18080 in /tmp/d.
    const PRINTED: &str = r#"[demo   9.1s] worker is up (http://127.0.0.1:19101/readyz)
[demo] READY: API http://127.0.0.1:18080/api  (logs: /tmp/d/api.log, /tmp/d/worker.log)
Publish the demo image to the demo cloud with curl (README.md, "Publish an image with curl"):

  IMAGE=users/demo/scannedinstances/2/scans/2/images/2
  curl -s -u demo:demopass -X POST -H 'Content-Type: application/xml' -H 'Accept: application/xml' \
    --data-binary @/tmp/d/publish.xml \
    http://127.0.0.1:18080/api/$IMAGE/pimages
  # → 201, a publishImage whose <uri> ends in /pimages/N, N the ticket's number; then poll:
  curl -s -u demo:demopass http://127.0.0.1:18080/api/$IMAGE/pimages/N/status
  curl -s -u demo:demopass -H 'Accept: application/json' http://127.0.0.1:18080/api/$IMAGE/pimages/N

Or with the real hammr 3.8.13 (installed under .lab/hammr on first use):
"#;

    fn values(ticket: &str) -> Values<'_> {
        Values {
            api: "http://127.0.0.1:18080/api/",
            dir: "/tmp/d",
            image: "users/demo/scannedinstances/2/scans/2/images/2",
            ticket,
        }
    }

    #[test]
    fn finds_the_two_commands_and_the_curl_lines() {
        let r = Readme::parse(README).unwrap();
        assert_eq!(r.demo_up, "scripts/demo up");
        assert_eq!(r.test, "scripts/test");
        assert_eq!(r.demo_down().unwrap(), "scripts/demo down");
        assert_eq!(r.curl.lines.len(), 4, "{:?}", r.curl.lines);
        assert!(r.curl.post().unwrap().ends_with("/api/$IMAGE/pimages"));
        r.check_programs(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
            .unwrap();
    }

    #[test]
    fn puts_the_demo_values_in() {
        let v = values("7");
        assert_eq!(
            put_in("IMAGE=users/demo/scannedinstances/1/scans/1/images/1", &v),
            "IMAGE=users/demo/scannedinstances/2/scans/2/images/2"
        );
        assert_eq!(
            put_in(
                "curl -s http://127.0.0.1:8080/api/$IMAGE/pimages/1/status",
                &v
            ),
            "curl -s http://127.0.0.1:18080/api/$IMAGE/pimages/7/status"
        );
        assert_eq!(
            put_in("curl --data-binary @.lab/demo/publish.xml http://127.0.0.1:8080/api/$IMAGE/pimages", &v),
            "curl --data-binary @/tmp/d/publish.xml http://127.0.0.1:18080/api/$IMAGE/pimages"
        );
        // No number there: nothing to replace.
        assert_eq!(
            put_in("curl x/$IMAGE/pimages/$N", &v),
            "curl x/$IMAGE/pimages/$N"
        );
    }

    #[test]
    fn the_printed_commands_are_the_readme_ones() {
        let r = Readme::parse(README).unwrap();
        assert_eq!(
            printed_image(PRINTED).unwrap(),
            "users/demo/scannedinstances/2/scans/2/images/2"
        );
        r.curl.check_printed(PRINTED, &values("N")).unwrap();
    }

    #[test]
    fn a_changed_curl_line_fails_the_check() {
        for (from, to) in [
            ("-H 'Accept: application/xml' \\", "\\"),
            (
                "curl -s -u demo:demopass http://",
                "curl -s -u demo:demopass -L http://",
            ),
            ("curl -s -u demo:demopass -H", "curl -s -u demo:demo -H"),
        ] {
            assert!(README.contains(from), "{from}");
            let changed = Readme::parse(&README.replacen(from, to, 1)).unwrap();
            let err = changed
                .curl
                .check_printed(PRINTED, &values("N"))
                .unwrap_err();
            assert!(err.to_string().contains("are not README.md's"), "{err}");
        }
    }

    #[test]
    fn a_readme_without_the_table_or_the_curl_block_fails() {
        let cases = [
            (
                "## The two commands",
                "## Two commands",
                "no section `## The two commands`",
            ),
            (
                "| **Run the tests** | `scripts/test` |",
                "",
                "no row naming `test`",
            ),
            (
                "## Publish an image with curl",
                "## Publish",
                "no section `## Publish an image",
            ),
            (
                "--data-binary @.lab/demo/publish.xml \\\n  ",
                "",
                "are not README.md's",
            ),
            ("-X POST", "-d x", "has no curl POST"),
        ];
        for (from, to, message) in cases {
            assert!(README.contains(from), "{from}");
            let readme = README.replacen(from, to, 1);
            let err = Readme::parse(&readme)
                .and_then(|r| r.curl.check_printed(PRINTED, &values("N")))
                .unwrap_err();
            assert!(err.to_string().contains(message), "{from}: {err}");
        }
    }
}
