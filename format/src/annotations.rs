//! A run's annotations: the tags and the note its user gives it (`annotations.json`, set by
//! `diffit runs tag` / `diffit runs note`). They live apart from `metadata.json`, which only the
//! run's writer writes, so annotating a run never races its training.

use serde::{Deserialize, Serialize};

/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 64;
/// Most tags one run carries.
pub const MAX_TAGS: usize = 64;
/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 10_000;

/// `annotations.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotations {
    /// Tags, sorted and without repeats.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why an annotation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// A tag outside the grammar.
    #[error("invalid tag {tag:?}: a tag is 1 to {MAX_TAG_CHARS} letters, digits, '_', '-' or '.'")]
    Tag {
        /// The tag as given.
        tag: String,
    },
    /// More tags than [`MAX_TAGS`].
    #[error("a run carries at most {MAX_TAGS} tags ({count} asked for)")]
    TooManyTags {
        /// How many the run would carry.
        count: usize,
    },
    /// A note longer than [`MAX_NOTE_CHARS`].
    #[error("a note is at most {MAX_NOTE_CHARS} characters ({chars} given)")]
    NoteTooLong {
        /// Its length.
        chars: usize,
    },
}

/// Checks one tag: letters and digits (any script), `_`, `-` and `.`, 1 to 64 of them. No
/// spaces, quotes or `:`, so that a search (`tag:sweep`) names any tag as written.
pub fn check_tag(tag: &str) -> Result<(), AnnotationError> {
    let chars = tag.chars().count();
    let ok = (1..=MAX_TAG_CHARS).contains(&chars)
        && tag
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(AnnotationError::Tag {
            tag: tag.to_string(),
        })
    }
}

impl Annotations {
    /// Adds `add` and removes `remove` (each checked); the tags stay sorted and unique.
    pub fn retag(&mut self, add: &[String], remove: &[String]) -> Result<(), AnnotationError> {
        for tag in add.iter().chain(remove) {
            check_tag(tag)?;
        }
        self.tags.retain(|t| !remove.contains(t));
        self.tags
            .extend(add.iter().filter(|t| !remove.contains(t)).cloned());
        self.tags.sort();
        self.tags.dedup();
        if self.tags.len() > MAX_TAGS {
            return Err(AnnotationError::TooManyTags {
                count: self.tags.len(),
            });
        }
        Ok(())
    }

    /// Sets the note (`None` or blank text clears it).
    pub fn set_note(&mut self, note: Option<&str>) -> Result<(), AnnotationError> {
        let note = note.map(str::trim).filter(|n| !n.is_empty());
        if let Some(text) = note {
            let chars = text.chars().count();
            if chars > MAX_NOTE_CHARS {
                return Err(AnnotationError::NoteTooLong { chars });
            }
        }
        self.note = note.map(str::to_string);
        Ok(())
    }

    /// Checks a file's contents as read: the rules `retag` and `set_note` keep.
    pub fn check(&self) -> Result<(), AnnotationError> {
        for tag in &self.tags {
            check_tag(tag)?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err(AnnotationError::TooManyTags {
                count: self.tags.len(),
            });
        }
        match &self.note {
            Some(note) if note.chars().count() > MAX_NOTE_CHARS => {
                Err(AnnotationError::NoteTooLong {
                    chars: note.chars().count(),
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tags_stay_sorted_and_unique_and_removal_wins() {
        let mut a = Annotations::default();
        a.retag(&strings(&["sweep", "lr-1e-3", "sweep"]), &[])
            .unwrap();
        assert_eq!(a.tags, strings(&["lr-1e-3", "sweep"]));
        a.retag(&strings(&["best", "x"]), &strings(&["sweep", "x"]))
            .unwrap();
        assert_eq!(a.tags, strings(&["best", "lr-1e-3"]));
    }

    #[test]
    fn bad_tags_and_long_notes_are_refused_and_change_nothing() {
        let mut a = Annotations::default();
        a.retag(&strings(&["kept"]), &[]).unwrap();
        for bad in ["", "two words", "tag:x", "quo\"te", &"x".repeat(65)] {
            let err = a.retag(&strings(&[bad]), &[]).unwrap_err();
            assert!(matches!(err, AnnotationError::Tag { .. }), "{bad}");
        }
        assert_eq!(a.tags, strings(&["kept"]));
        check_tag("épreuve_2.b").unwrap();
        let long = "n".repeat(MAX_NOTE_CHARS + 1);
        assert!(a.set_note(Some(&long)).is_err());
        a.set_note(Some("  lr sweep, seed 3 \n")).unwrap();
        assert_eq!(a.note.as_deref(), Some("lr sweep, seed 3"));
        a.set_note(Some("   ")).unwrap();
        assert_eq!(a.note, None);
    }

    #[test]
    fn a_file_read_back_is_checked() {
        let read: Annotations = serde_json::from_str(r#"{"tags":["ok","not ok"]}"#).unwrap();
        assert!(read.check().is_err());
        let empty: Annotations = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Annotations::default());
    }
}
