//! Printable text: which characters a terminal shows as themselves, and an escaped form for
//! the others, so that what a user sent cannot move the cursor, recolour or hide text.

use std::borrow::Cow;

/// Not printable: controls (C0, DEL, C1), line and paragraph separators, the invisible
/// format characters that hide or reorder text (zero-width, bidirectional marks, embeddings,
/// overrides and isolates: "Trojan Source"), tag characters and noncharacters.
pub fn is_printable(c: char) -> bool {
    let invisible = matches!(
        c,
        '\u{AD}'
            | '\u{600}'..='\u{605}'
            | '\u{61C}'
            | '\u{6DD}'
            | '\u{70F}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{FDD0}'..='\u{FDEF}'
            | '\u{E0000}'..='\u{E007F}'
    );
    let noncharacter = (c as u32) & 0xFFFE == 0xFFFE;
    !(c.is_control() || invisible || noncharacter)
}

/// `text` with each character that is not printable written as `\u{…}`.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_printable) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_printable(c) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_invisible_characters_are_not_printable() {
        for c in [
            '\0', '\t', '\n', '\u{1B}', '\u{7F}', '\u{9B}', '\u{200B}', '\u{202E}',
        ] {
            assert!(!is_printable(c), "{c:?}");
        }
        for c in ['\u{2066}', '\u{FEFF}', '\u{FFFF}', '\u{1FFFE}', '\u{E0041}'] {
            assert!(!is_printable(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '\u{301}', 'ß', '日', '🙂', '\\'] {
            assert!(is_printable(c), "{c:?}");
        }
    }

    #[test]
    fn escapes_only_what_is_not_printable() {
        assert!(matches!(escaped("Ubuntu 24.04 é"), Cow::Borrowed(_)));
        assert_eq!(
            escaped("red \u{1B}[31mtext\u{7}\nnext \u{202E}txt.exe"),
            "red \\u{1b}[31mtext\\u{7}\\u{a}next \\u{202e}txt.exe"
        );
    }
}
