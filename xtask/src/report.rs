//! A run's results: Markdown tables for docs/BENCHMARKS.md and the same figures as JSON.

use anyhow::Result;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// One table of results and its figures.
pub struct Section {
    pub title: String,
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    pub figures: Value,
}

impl Section {
    pub fn new(title: impl Into<String>, header: &[&'static str]) -> Self {
        Self {
            title: title.into(),
            header: header.to_vec(),
            rows: Vec::new(),
            figures: json!({}),
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = format!("### {}\n\n", self.title);
        if self.header.is_empty() {
            // A list, not a table (the machine).
            for row in &self.rows {
                let _ = writeln!(md, "{}", row.join(" "));
            }
            return md;
        }
        let _ = writeln!(md, "| {} |", self.header.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
        md
    }
}

/// A figure measured against the target docs/BENCHMARKS.md sets for it.
pub struct Target {
    pub measure: String,
    pub value: f64,
    pub target: &'static str,
    pub met: bool,
}

/// Everything one run measured.
#[derive(Default)]
pub struct Report {
    pub sections: Vec<Section>,
    pub targets: Vec<Target>,
}

impl Report {
    /// Prints the section's table as it is measured (a long run shows its progress).
    pub fn add(&mut self, section: Section) {
        println!("{}", section.markdown());
        self.sections.push(section);
    }

    pub fn target(
        &mut self,
        measure: impl Into<String>,
        value: f64,
        target: &'static str,
        met: bool,
    ) {
        self.targets.push(Target {
            measure: measure.into(),
            value,
            target,
            met,
        });
    }

    pub fn markdown(&self) -> String {
        let mut md: String = self.sections.iter().map(|s| s.markdown() + "\n").collect();
        if !self.targets.is_empty() {
            md.push_str("### Targets\n\n| measure | value | target | met? |\n|---|---|---|---|\n");
            for t in &self.targets {
                let met = if t.met { "met" } else { "**missed**" };
                let _ = writeln!(
                    md,
                    "| {} | {:.3} | {} | {met} |",
                    t.measure, t.value, t.target
                );
            }
        }
        md
    }

    pub fn json(&self, meta: Value) -> Value {
        json!({
            "meta": meta,
            "sections": self.sections.iter().map(|s| json!({
                "title": s.title,
                "header": s.header,
                "rows": s.rows,
                "figures": s.figures,
            })).collect::<Vec<_>>(),
            "targets": self.targets.iter().map(|t| json!({
                "measure": t.measure, "value": finite(t.value), "target": t.target, "met": t.met,
            })).collect::<Vec<_>>(),
        })
    }

    /// DIR/latest.json and DIR/latest.md.
    pub fn write(&self, dir: &Path, meta: Value) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("latest.json"),
            serde_json::to_string_pretty(&self.json(meta))? + "\n",
        )?;
        std::fs::write(dir.join("latest.md"), self.markdown())?;
        Ok(())
    }
}

/// JSON has no NaN: a figure with nothing to compare to is null.
pub fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}
