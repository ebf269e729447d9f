//! How listings and shows are printed: `-f table|json|yaml|value` and `-c COLUMN`, as the
//! `openstack` CLI prints them, so operators' scripts and habits carry over.

use comfy_table::{presets::ASCII_FULL, Table};
use serde_json::{Map, Value};

use crate::printable::escaped;

/// The output options every listing and show takes.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only this column (repeatable, in the order given).
    #[arg(short = 'c', long = "column", value_name = "COLUMN")]
    pub columns: Vec<String>,
}

/// `table` for people; `json` and `yaml` for programs; `value`: the bare values, a line per
/// row, spaces between columns (`-f value -c id` feeds a shell loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
    Value,
}

/// Rows of named columns: `tickets list`, `accounts list`, …
pub struct Listing {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<Value>>,
}

/// One object's fields, in order: `tickets show`.
pub struct Record {
    pub fields: Vec<(&'static str, Value)>,
}

impl OutputArgs {
    /// Prints a listing: a table with a header, an array of objects, or value lines.
    pub fn print_listing(&self, listing: Listing) -> anyhow::Result<()> {
        let picked = self.pick(listing.columns)?;
        let rows: Vec<Vec<(&str, Value)>> = listing
            .rows
            .into_iter()
            .map(|row| {
                picked
                    .iter()
                    .map(|&i| {
                        (
                            listing.columns[i],
                            row.get(i).cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect()
            })
            .collect();
        match self.format {
            Format::Table => {
                let mut table = new_table();
                table.set_header(picked.iter().map(|&i| listing.columns[i]));
                for row in &rows {
                    table.add_row(row.iter().map(|(_, v)| cell(v)));
                }
                println!("{table}");
            }
            Format::Value => {
                for row in &rows {
                    let values: Vec<String> = row.iter().map(|(_, v)| cell(v)).collect();
                    println!("{}", values.join(" "));
                }
            }
            Format::Json | Format::Yaml => {
                let objects: Vec<Value> = rows.into_iter().map(object).collect();
                self.print_structured(&Value::Array(objects))?;
            }
        }
        Ok(())
    }

    /// Prints one record: a two-column Field | Value table, an object, or value lines.
    pub fn print_record(&self, record: Record) -> anyhow::Result<()> {
        let names: Vec<&'static str> = record.fields.iter().map(|(name, _)| *name).collect();
        let picked = self.pick(&names)?;
        let fields: Vec<(&str, Value)> = picked
            .iter()
            .filter_map(|&i| record.fields.get(i).cloned())
            .collect();
        match self.format {
            Format::Table => {
                let mut table = new_table();
                table.set_header(["Field", "Value"]);
                for (name, value) in &fields {
                    table.add_row([name.to_string(), cell(value)]);
                }
                println!("{table}");
            }
            Format::Value => {
                for (_, value) in &fields {
                    println!("{}", cell(value));
                }
            }
            Format::Json | Format::Yaml => self.print_structured(&object(fields))?,
        }
        Ok(())
    }

    /// The indexes of the columns asked for with `-c` (all when none), in the order asked.
    fn pick(&self, columns: &[&str]) -> anyhow::Result<Vec<usize>> {
        if self.columns.is_empty() {
            return Ok((0..columns.len()).collect());
        }
        self.columns
            .iter()
            .map(|asked| {
                columns.iter().position(|c| c == asked).ok_or_else(|| {
                    anyhow::anyhow!(
                        "no column '{}'; the columns are: {}",
                        escaped(asked),
                        columns.join(", ")
                    )
                })
            })
            .collect()
    }

    fn print_structured(&self, value: &Value) -> anyhow::Result<()> {
        let value = escaped_strings(value);
        match self.format {
            Format::Yaml => print!("{}", yaml_serde::to_string(&value)?),
            _ => println!("{}", serde_json::to_string_pretty(&value)?),
        }
        Ok(())
    }
}

fn new_table() -> Table {
    // ASCII borders, as the openstack CLI draws them; a cell is never wrapped (comfy-table's
    // terminal support is left out), so `grep` sees each row whole.
    let mut table = Table::new();
    table.load_preset(ASCII_FULL);
    table
}

/// Every string with its unprintable characters written `\u{…}`, as in the table: JSON would
/// pass bidirectional overrides and C1 controls through, and YAML the former.
fn escaped_strings(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(escaped(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(escaped_strings).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), escaped_strings(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn object(fields: Vec<(&str, Value)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Map<_, _>>(),
    )
}

/// A value as table or `value` text. Texts a user or a cloud wrote are escaped: none may
/// drive the terminal (JSON and YAML escape them themselves). An array is a line per item;
/// an object `key='value'` pairs, as the openstack CLI shows nested fields.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => escaped(s).to_string(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join("\n"),
        Value::Object(fields) => fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}='{}'", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(format: Format, columns: &[&str]) -> OutputArgs {
        OutputArgs {
            format,
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn columns_are_picked_in_the_order_asked_and_an_unknown_one_names_the_others() {
        let a = args(Format::Json, &["state", "id", "state"]);
        assert_eq!(a.pick(&["id", "state", "user"]).unwrap(), vec![1, 0, 1]);
        let e = args(Format::Json, &["bogus"])
            .pick(&["id", "state"])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no column 'bogus'; the columns are: id, state");
    }

    #[test]
    fn cells_escape_control_characters_and_show_nested_values_as_the_openstack_cli() {
        assert_eq!(cell(&json!("a\u{1b}[31mb")), "a\\u{1b}[31mb");
        assert_eq!(cell(&Value::Null), "");
        assert_eq!(cell(&json!(42)), "42");
        assert_eq!(
            cell(&json!([{"number": 1, "error": null, "outcome": "retried"}, "x"])),
            "number='1', outcome='retried'\nx"
        );
    }

    #[test]
    fn json_and_yaml_carry_no_character_that_drives_a_terminal() {
        let hostile = json!([{"message": "a\u{1b}[31m\u{9b}\u{202e}b", "n": 1}]);
        let safe = escaped_strings(&hostile);
        assert_eq!(safe[0]["message"], "a\\u{1b}[31m\\u{9b}\\u{202e}b");
        assert_eq!(safe[0]["n"], 1);
        for text in [
            serde_json::to_string(&safe).unwrap(),
            yaml_serde::to_string(&safe).unwrap(),
        ] {
            assert!(
                text.chars()
                    .all(|c| c == '\n' || crate::printable::is_printable(c)),
                "{text}"
            );
        }
    }
}
