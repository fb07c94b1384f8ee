//! The CLI's presentation: progress (`progress`), failures as messages,
//! exit codes and JSON (`failure`), and text that fits a terminal (`wrap`).
//! No migration logic lives here.

pub mod failure;
pub mod progress;

/// Terminal width the human output is written for.
pub const COLUMNS: usize = 80;

/// Wraps `text` at word boundaries to [`COLUMNS`], every line indented by
/// `indent` spaces. A word longer than a line (a long path) stays whole.
pub fn wrap(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > COLUMNS {
            out.push_str(&pad);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&pad);
    out.push_str(&line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_80_columns() {
        let text = "word ".repeat(60);
        let w = wrap(&text, 3);
        assert!(w
            .lines()
            .all(|l| l.len() <= COLUMNS && l.starts_with("   word")));
        assert_eq!(w.split_whitespace().count(), 60);
        assert_eq!(wrap("short", 2), "  short");
    }
}
