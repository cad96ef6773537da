//! "Did you mean …?": the suggestion of a known name for a mistyped one, shared by validation, the
//! registry and the log families.

/// The candidate closest to `name` by edit distance (Damerau–Levenshtein), when it is close enough to
/// suggest: at most 2 edits away, or a third of the candidate's length for long names, and never a
/// complete rewrite.
///
/// ```
/// use dfp_core::suggest::closest;
/// let names = ["file-source", "file-sink", "filter", "select"];
/// assert_eq!(closest("fiter", names), Some("filter"));
/// assert_eq!(closest("kafka", names), None);
/// ```
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len().max(name.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos_not_strangers() {
        let names = ["file-source", "file-sink", "filter", "select"];
        assert_eq!(closest("fiter", names), Some("filter"));
        assert_eq!(closest("file-sorce", names), Some("file-source"));
        assert_eq!(closest("kafka", names), None);
    }
}
