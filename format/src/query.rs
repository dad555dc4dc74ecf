//! The run search: a query string (`lr<1e-3 tag:sweep -status:broken trees`) parsed once and
//! matched against run list rows, and the sort of rows by any field or config value. The
//! server filters `/api/runs` with it; it is plain data and code, so the app could too.
//!
//! Grammar: terms separated by spaces, all of which must hold. A term is `KEY OP VALUE`
//! (`OP` one of `<` `<=` `>` `>=` `=` `!=` `:`), `tag:NAME`, or a bare word (found in the
//! experiment name, the note or a tag; case-insensitive); a leading `-` negates it; double
//! quotes keep spaces in a value. `KEY` is a field of the row ([`FIELDS`]) or a config value:
//! its dotted path in `config.json` (`training.learning_rate`), its last part when that names
//! one value (`learning_rate`), or `lr`. A number compares as a number, anything else as text
//! (`=` case-insensitive, `:` contains). A row without the key does not match (a negated term
//! then does).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::api::RunSummary;

/// The row fields a query can name, besides config values.
pub const FIELDS: [&str; 12] = [
    "run",
    "experiment",
    "status",
    "created",
    "updated",
    "checkpoints",
    "last_epoch",
    "best_epoch",
    "best",
    "best_val_loss",
    "base_val_loss",
    "note",
];

/// Short names of config values.
const ALIASES: [(&str, &str); 1] = [("lr", "learning_rate")];

/// A query that cannot be parsed, or that names something no run has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A term with an operator but no value (`lr<`).
    #[error("search term {term:?} has no value after {op:?}")]
    MissingValue {
        /// The term.
        term: String,
        /// Its operator.
        op: String,
    },
    /// A quote left open.
    #[error("search has an unclosed quote: {query:?}")]
    UnclosedQuote {
        /// The whole query.
        query: String,
    },
    /// A key that is neither a field nor a config value of any run.
    #[error(
        "unknown search key {key:?}: not a run field ({fields}) nor a config value of any run"
    )]
    UnknownKey {
        /// The key.
        key: String,
        /// The fields, listed.
        fields: String,
    },
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `:` (contains, for text; equals, for numbers)
    Has,
}

impl Op {
    /// Longest spellings first, so that `<=` is not read as `<`.
    const SPELLINGS: [(&'static str, Op); 7] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
        ("=", Op::Eq),
        (":", Op::Has),
    ];
}

/// One term of a query.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    /// A bare word, lowercased.
    Word(String),
    /// `tag:NAME`.
    Tag(String),
    /// `KEY OP VALUE`.
    Compare { key: String, op: Op, value: String },
}

/// A parsed query; the empty query matches every row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    terms: Vec<(bool, Test)>,
}

/// The value of a key in a row.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A number.
    Number(f64),
    /// Text (and config values that are not numbers: booleans, lists as JSON).
    Text(String),
}

impl FieldValue {
    fn of_json(value: &Value) -> Option<FieldValue> {
        match value {
            Value::Null => None,
            Value::Number(n) => n.as_f64().map(FieldValue::Number),
            Value::String(s) => Some(FieldValue::Text(s.clone())),
            other => Some(FieldValue::Text(other.to_string())),
        }
    }

    /// Orders two values: numbers before text, numbers by value, text by its characters.
    pub fn cmp_values(&self, other: &FieldValue) -> Ordering {
        match (self, other) {
            (FieldValue::Number(a), FieldValue::Number(b)) => a.total_cmp(b),
            (FieldValue::Number(_), FieldValue::Text(_)) => Ordering::Less,
            (FieldValue::Text(_), FieldValue::Number(_)) => Ordering::Greater,
            (FieldValue::Text(a), FieldValue::Text(b)) => a.cmp(b),
        }
    }
}

/// Splits a query into tokens at spaces outside double quotes; quotes are removed.
fn tokens(query: &str) -> Result<Vec<String>, QueryError> {
    let mut out = vec![];
    let mut current = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in query.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut current));
                }
                any = false;
            }
            c => {
                current.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err(QueryError::UnclosedQuote {
            query: query.to_string(),
        });
    }
    if any {
        out.push(current);
    }
    Ok(out)
}

fn is_key(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn parse_term(token: &str) -> Result<Test, QueryError> {
    let key_end = token
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(token.len());
    let (key, rest) = token.split_at(key_end);
    let operator = Op::SPELLINGS
        .iter()
        .find(|(spelling, _)| rest.starts_with(spelling));
    match operator {
        Some((spelling, op)) if is_key(key) => {
            let value = &rest[spelling.len()..];
            if value.is_empty() {
                return Err(QueryError::MissingValue {
                    term: token.to_string(),
                    op: spelling.to_string(),
                });
            }
            let key = key.to_ascii_lowercase();
            if key == "tag" && matches!(op, Op::Has | Op::Eq) {
                return Ok(Test::Tag(value.to_string()));
            }
            Ok(Test::Compare {
                key,
                op: *op,
                value: value.to_string(),
            })
        }
        _ => Ok(Test::Word(token.to_lowercase())),
    }
}

impl Query {
    /// Parses a query; blank text is the query that matches everything.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        let mut terms = vec![];
        for token in tokens(text)? {
            let (negated, body) = match token.strip_prefix('-') {
                Some(rest) if !rest.is_empty() => (true, rest),
                _ => (false, token.as_str()),
            };
            terms.push((negated, parse_term(body)?));
        }
        Ok(Query { terms })
    }

    /// True for the query that matches every row.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Checks that every key the query compares is a field or a config value of some row.
    pub fn check_keys<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a RunSummary> + Clone,
    ) -> Result<(), QueryError> {
        for (_, test) in &self.terms {
            if let Test::Compare { key, .. } = test {
                check_key(key, rows.clone())?;
            }
        }
        Ok(())
    }

    /// True when `row` satisfies every term.
    pub fn matches(&self, row: &RunSummary) -> bool {
        self.terms
            .iter()
            .all(|(negated, test)| test_row(test, row) != *negated)
    }
}

/// Checks that `key` names a field or a config value of at least one of `rows`.
pub fn check_key<'a>(
    key: &str,
    rows: impl IntoIterator<Item = &'a RunSummary>,
) -> Result<(), QueryError> {
    if key == "tag" || FIELDS.contains(&key) || rows.into_iter().any(|r| param(r, key).is_some()) {
        return Ok(());
    }
    Err(QueryError::UnknownKey {
        key: key.to_string(),
        fields: FIELDS.join(", "),
    })
}

/// A config value of the row by key: the dotted path, or the last part of exactly one path
/// (after the alias is resolved).
fn param<'a>(row: &'a RunSummary, key: &str) -> Option<&'a Value> {
    let params = &row.info.as_ref()?.params;
    if let Some(v) = params.get(key) {
        return Some(v);
    }
    let key = ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key, |(_, name)| name);
    let mut found = params
        .iter()
        .filter(|(path, _)| path.rsplit('.').next() == Some(key) || path.as_str() == key);
    match (found.next(), found.next()) {
        (Some((_, v)), None) => Some(v),
        _ => None,
    }
}

/// The value of `key` in `row`: a field, else a config value.
pub fn field(row: &RunSummary, key: &str) -> Option<FieldValue> {
    let info = row.info.as_ref();
    let number = |v: Option<f64>| v.map(FieldValue::Number);
    let text = |v: Option<&String>| v.map(|s| FieldValue::Text(s.clone()));
    match key {
        "run" => Some(FieldValue::Number(f64::from(row.run_number))),
        "experiment" => text(info.map(|i| &i.experiment_name)),
        "status" => Some(FieldValue::Text(row.status.as_str().to_string())),
        "created" => text(info.map(|i| &i.created_at)),
        "updated" => text(info.and_then(|i| i.updated_at.as_ref())),
        "checkpoints" => number(info.map(|i| i.checkpoints_count as f64)),
        "last_epoch" => number(info.and_then(|i| i.last_epoch).map(f64::from)),
        "best_epoch" => number(
            info.and_then(|i| i.best.as_ref())
                .map(|b| f64::from(b.epoch)),
        ),
        "best" => number(info.and_then(|i| i.best.as_ref()).and_then(|b| b.value)),
        "best_val_loss" => number(row.best_value_of("val_loss")),
        "base_val_loss" => number(info.and_then(|i| i.base_val_loss)),
        "note" => text(info.and_then(|i| i.note.as_ref())),
        _ => param(row, key).and_then(FieldValue::of_json),
    }
}

fn test_row(test: &Test, row: &RunSummary) -> bool {
    let info = row.info.as_ref();
    match test {
        Test::Word(word) => {
            let in_text = |s: &str| s.to_lowercase().contains(word.as_str());
            info.is_some_and(|i| {
                in_text(&i.experiment_name)
                    || i.note.as_deref().is_some_and(in_text)
                    || i.tags.iter().any(|t| in_text(t))
            }) || row.run_number.to_string() == *word
        }
        Test::Tag(tag) => info.is_some_and(|i| i.tags.iter().any(|t| t == tag)),
        Test::Compare { key, op, value } => {
            if key == "tag" {
                let has = info.is_some_and(|i| i.tags.iter().any(|t| t == value));
                return (*op == Op::Ne) != has;
            }
            let Some(actual) = field(row, key) else {
                return false;
            };
            compare(&actual, *op, value)
        }
    }
}

fn compare(actual: &FieldValue, op: Op, wanted: &str) -> bool {
    let ordering = match (actual, wanted.parse::<f64>()) {
        (FieldValue::Number(a), Ok(b)) => a.partial_cmp(&b),
        (FieldValue::Number(_), Err(_)) => return op == Op::Ne,
        (FieldValue::Text(a), _) => {
            let (a, b) = (a.to_lowercase(), wanted.to_lowercase());
            if op == Op::Has {
                return a.contains(&b);
            }
            Some(a.cmp(&b))
        }
    };
    let Some(ordering) = ordering else {
        return false;
    };
    match op {
        Op::Lt => ordering.is_lt(),
        Op::Le => ordering.is_le(),
        Op::Gt => ordering.is_gt(),
        Op::Ge => ordering.is_ge(),
        Op::Eq | Op::Has => ordering.is_eq(),
        Op::Ne => ordering.is_ne(),
    }
}

/// Orders rows by `key` (a field or a config value); rows without it go last either way, ties
/// by run number.
pub fn compare_rows(a: &RunSummary, b: &RunSummary, key: &str, ascending: bool) -> Ordering {
    let primary = match (field(a, key), field(b, key)) {
        (Some(x), Some(y)) => {
            let o = x.cmp_values(&y);
            if ascending {
                o
            } else {
                o.reverse()
            }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    primary.then(a.run_number.cmp(&b.run_number))
}

/// The config keys whose values are not the same in every one of `rows` (a row without the key
/// differs from one with it), sorted.
pub fn varying_params<'a>(rows: impl IntoIterator<Item = &'a RunSummary>) -> Vec<String> {
    let infos: Vec<_> = rows.into_iter().filter_map(|r| r.info.as_ref()).collect();
    let keys: BTreeSet<&String> = infos.iter().flat_map(|i| i.params.keys()).collect();
    keys.into_iter()
        .filter(|key| {
            let mut values = infos.iter().map(|i| i.params.get(*key));
            let first = values.next().flatten();
            values.any(|v| v != first)
        })
        .cloned()
        .collect()
}

/// The scalar leaves of a config object as dotted paths (`training.learning_rate`); lists are
/// kept whole, nulls dropped.
pub fn flatten_params(config: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            Value::Null => {}
            leaf if !prefix.is_empty() => {
                out.insert(prefix.to_string(), leaf.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", config, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BestSummary, RunInfo, RunState};
    use crate::metadata::RunStatus;
    use serde_json::json;

    fn row(n: u32, name: &str, lr: f64, tags: &[&str], best: Option<f64>) -> RunSummary {
        RunSummary {
            run_number: n,
            status: RunState::Finished,
            error: None,
            info: Some(RunInfo {
                experiment_name: name.to_string(),
                created_at: format!("2026-12-0{n}T10:00:00"),
                updated_at: None,
                recorded_status: RunStatus::Finished,
                status_reason: None,
                checkpoints_count: 3,
                last_epoch: Some(3),
                best: best.map(|v| BestSummary {
                    epoch: 2,
                    monitor: "val_loss".into(),
                    value: Some(v),
                }),
                base_val_loss: Some(0.5),
                writer_active: false,
                seed: None,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                note: (n == 2).then(|| "Second try, warm restart".to_string()),
                params: flatten_params(&json!({
                    "training": {"learning_rate": lr, "batch_size": 8, "mlflow": {"tracking_uri": null}},
                    "lora": {"rank": 4, "target_modules": ["qkv", "proj"]},
                })),
            }),
        }
    }

    fn rows() -> Vec<RunSummary> {
        vec![
            row(1, "trees", 1e-3, &["sweep"], Some(0.3)),
            row(2, "trees-big", 5e-4, &["sweep", "best"], Some(0.2)),
            row(3, "flowers", 1e-4, &[], None),
            RunSummary {
                run_number: 4,
                status: RunState::Broken,
                error: Some("metadata.json: bad".into()),
                info: None,
            },
        ]
    }

    fn hits(query: &str) -> Vec<u32> {
        let q = Query::parse(query).unwrap();
        let rows = rows();
        q.check_keys(&rows).unwrap();
        rows.iter()
            .filter(|r| q.matches(r))
            .map(|r| r.run_number)
            .collect()
    }

    #[test]
    fn terms_compare_numbers_text_tags_and_words() {
        assert_eq!(hits(""), [1, 2, 3, 4]);
        assert_eq!(hits("lr<1e-3"), [2, 3]);
        assert_eq!(hits("lr<=1e-3 tag:sweep"), [1, 2]);
        assert_eq!(hits("training.learning_rate>=5e-4"), [1, 2]);
        assert_eq!(hits("learning_rate=0.0001"), [3]);
        assert_eq!(hits("-tag:sweep"), [3, 4]);
        assert_eq!(hits("tag!=sweep"), [3, 4]);
        assert_eq!(hits("trees"), [1, 2]);
        assert_eq!(hits("TREES -big"), [1]);
        assert_eq!(hits("warm"), [2]);
        assert_eq!(hits("experiment:flow"), [3]);
        assert_eq!(hits("experiment=TREES"), [1]);
        assert_eq!(hits("status:broken"), [4]);
        assert_eq!(hits("-status=broken best_val_loss<0.25"), [2]);
        assert_eq!(hits("best>0"), [1, 2]);
        assert_eq!(hits("note:\"warm restart\""), [2]);
        assert_eq!(hits("created<2026-12-02"), [1]);
        assert_eq!(hits("run>=3"), [3, 4]);
        assert_eq!(hits("3"), [3]);
        assert_eq!(hits("target_modules:proj"), [1, 2, 3]);
        assert_eq!(hits("rank=4 batch_size!=8"), Vec::<u32>::new());
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        assert!(matches!(
            Query::parse("lr<"),
            Err(QueryError::MissingValue { .. })
        ));
        assert!(matches!(
            Query::parse("note:\"open"),
            Err(QueryError::UnclosedQuote { .. })
        ));
        let q = Query::parse("momentum>0.9").unwrap();
        let err = q.check_keys(&rows()).unwrap_err();
        assert!(err.to_string().contains("\"momentum\""), "{err}");
        // An ambiguous last part names no single value: the dotted path does.
        let mut r = rows();
        if let Some(info) = r[0].info.as_mut() {
            info.params.insert("model.rank".into(), json!(2));
        }
        assert_eq!(field(&r[0], "rank"), None);
        assert_eq!(field(&r[0], "lora.rank"), Some(FieldValue::Number(4.0)));
    }

    #[test]
    fn sorting_puts_missing_values_last_both_ways() {
        let mut r = rows();
        r.sort_by(|a, b| compare_rows(a, b, "best", true));
        assert_eq!(
            r.iter().map(|r| r.run_number).collect::<Vec<_>>(),
            [2, 1, 3, 4]
        );
        r.sort_by(|a, b| compare_rows(a, b, "best", false));
        assert_eq!(
            r.iter().map(|r| r.run_number).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        r.sort_by(|a, b| compare_rows(a, b, "lr", false));
        assert_eq!(
            r.iter().map(|r| r.run_number).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn varying_params_are_the_ones_that_differ() {
        assert_eq!(varying_params(&rows()), ["training.learning_rate"]);
        assert!(varying_params(&rows()[..1]).is_empty());
        let flat = flatten_params(&json!({"a": {"b": 1, "c": null, "d": [1, 2]}, "e": "x"}));
        assert_eq!(flat.keys().collect::<Vec<_>>(), ["a.b", "a.d", "e"]);
    }
}
