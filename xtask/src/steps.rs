//! A long command's steps and their durations, printed as they finish (compose-test,
//! readme-check) and kept for its JSON summary.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// Steps and their durations, as they finish.
pub struct Steps {
    name: &'static str,
    start: Instant,
    last: Instant,
    pub done: Vec<(String, u64)>,
}

impl Steps {
    /// NAME prefixes every line (`[NAME 12s] …`).
    pub fn new(name: &'static str) -> Self {
        let now = Instant::now();
        Steps {
            name,
            start: now,
            last: now,
            done: Vec::new(),
        }
    }

    pub fn say(&self, msg: &str) {
        println!("[{} {}s] {msg}", self.name, self.start.elapsed().as_secs());
    }

    /// The step just finished.
    pub fn step(&mut self, name: impl Into<String>) {
        let name = name.into();
        let secs = self.last.elapsed().as_secs();
        self.say(&format!("done: {name} ({secs} s)"));
        self.done.push((name, secs));
        self.last = Instant::now();
    }

    /// Steps a script timed (PIMAGE_COMPOSE_STEPS lines: name TAB seconds).
    pub fn add_from(&mut self, file: &Path) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (name, secs) in text.lines().filter_map(|l| l.split_once('\t')) {
            self.done
                .push((name.to_string(), secs.trim().parse().unwrap_or(0)));
        }
        self.last = Instant::now();
    }

    pub fn total(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// The steps as the summaries write them.
    pub fn json(&self) -> Value {
        self.done
            .iter()
            .map(|(n, s)| json!({"step": n, "seconds": s}))
            .collect()
    }
}
