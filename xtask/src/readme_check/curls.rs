//! README.md's curl lines run as written, each in `bash -c` after the README's `IMAGE=` line,
//! and what the demo's API answered to each.

use super::readme::CurlBlock;
use crate::process::{cmd, output};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Precedes the HTTP code and content type curl writes after each answer.
const MARK: &str = "readme-check-answer:";

pub struct Curl {
    root: PathBuf,
    /// CURL_HOME: a curlrc of the check's own.
    home: PathBuf,
}

pub struct Answer {
    pub code: u16,
    pub content_type: String,
    pub body: String,
}

impl Curl {
    /// The HTTP code and content type come from the curlrc's `write-out`, so that the lines
    /// run exactly as written (and a user's ~/.curlrc cannot change them).
    pub fn new(root: &Path, dir: &Path) -> Result<Curl> {
        let home = dir.join("curl");
        std::fs::create_dir_all(&home)?;
        std::fs::write(
            home.join(".curlrc"),
            format!("write-out = \"\\n{MARK} %{{http_code}} %{{content_type}}\\n\"\n"),
        )?;
        Ok(Curl {
            root: root.to_path_buf(),
            home,
        })
    }

    /// `bash -c` the block's `IMAGE=` line, then LINE.
    pub fn run(&self, block: &CurlBlock, line: &str) -> Result<Answer> {
        let script = format!("{}\n{line}", block.image_line()?);
        let out = output(
            cmd("bash", ["-c", script.as_str()])
                .current_dir(&self.root)
                .env("CURL_HOME", &self.home),
        )
        .with_context(|| format!("README.md's `{line}`"))?;
        let (body, answer) = out
            .rsplit_once(MARK)
            .with_context(|| format!("`{line}` printed no answer: {out}"))?;
        let (code, content_type) = answer.trim().split_once(' ').unwrap_or((answer.trim(), ""));
        Ok(Answer {
            code: code
                .parse()
                .with_context(|| format!("`{line}`: HTTP code {code}"))?,
            content_type: content_type.to_string(),
            body: body.trim().to_string(),
        })
    }

    /// The POST answers 201 with a publishImage whose uri is IMAGE/pimages/N: N.
    pub fn publish(&self, block: &CurlBlock, image: &str) -> Result<String> {
        let line = block.post()?;
        let a = self.run(block, line)?;
        ensure!(
            a.code == 201 && a.body.contains("<ns0:publishImage "),
            "README.md's POST answered {} (expected 201 and a publishImage): {}",
            a.code,
            a.body
        );
        let prefix = format!("{image}/pimages/");
        xml_values(&a.body, "uri")
            .into_iter()
            .filter_map(|uri| uri.strip_prefix(&prefix))
            .find(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string)
            .with_context(|| format!("the POST's publishImage has no uri {prefix}N: {}", a.body))
    }

    /// The status poll, repeated until the ticket is complete (an error or a cancel fails).
    pub fn wait_complete(&self, block: &CurlBlock, within: Duration) -> Result<u32> {
        let line = block.status()?;
        let until = Instant::now() + within;
        let mut polls = 0;
        loop {
            polls += 1;
            let a = self.run(block, line)?;
            ensure!(a.code == 200, "`{line}` answered {}: {}", a.code, a.body);
            if a.body.contains("<complete>true</complete>") {
                return Ok(polls);
            }
            if a.body.contains("<error>true</error>")
                || a.body.contains("<cancelled>true</cancelled>")
            {
                bail!("the ticket ended without publishing: {}", a.body);
            }
            if Instant::now() > until {
                bail!("the ticket is not complete after {within:?}: {}", a.body);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The JSON GET answers JSON: the ticket (URI), complete, published to this run's Glance
    /// (not a lab on the default ports); its cloudId.
    pub fn json_get(
        &self,
        block: &CurlBlock,
        ticket_uri: &str,
        glance_port: u16,
    ) -> Result<String> {
        let line = block.json_get()?;
        let a = self.run(block, line)?;
        ensure!(
            a.code == 200 && a.content_type.starts_with("application/json"),
            "`{line}` answered {} {} (expected 200 application/json): {}",
            a.code,
            a.content_type,
            a.body
        );
        let v: Value = serde_json::from_str(&a.body)
            .with_context(|| format!("`{line}` answered no JSON: {}", a.body))?;
        let glance = format!("http://127.0.0.1:{glance_port}");
        ensure!(
            v["uri"] == ticket_uri
                && v["status"]["complete"] == true
                && v["credAccount"]["glanceUrl"] == glance.as_str(),
            "`{line}`: expected {ticket_uri}, complete, published to {glance}: {v}"
        );
        v["cloudId"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("`{line}`: no cloudId: {v}"))
    }
}

/// The text of each `<NAME>…</NAME>` element (no nesting: enough for `uri`).
fn xml_values<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|rest| rest.split_once(close.as_str()).map(|(v, _)| v))
        .collect()
}
