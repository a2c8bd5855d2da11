//! Words from another machine, made safe to print: a peer's status document, a node's output
//! relayed by `troops push`, a remote's complaint. Shown, never obeyed: a control character (an
//! escape sequence, a newline, a carriage return) in them would clear the operator's screen, forge
//! table rows or erase a line. This is the one function every printer of such words goes through.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) and every bidirectional override written out
/// as `\n`, `\r`, `\t` or `\u{..}`, so that it prints as one line of what it is. Nothing else
/// changes (a backslash stays one), so escaping what is escaped already changes nothing.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters, and the Unicode controls that reorder what a terminal shows (U+202A to
/// U+202E, U+2066 to U+2069): a line that reads one way and says another.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_print_as_what_they_are() {
        #[rustfmt::skip]
        let cases = [
            ("web-1", "web-1"),
            ("\x1b[2J\x1b[Hall good", "\\u{1b}[2J\\u{1b}[Hall good"),
            ("a\nweb-9  healthy", "a\\nweb-9  healthy"),
            ("failed\r healthy", "failed\\r healthy"),
            ("tab\there", "tab\\there"),
            ("nul\0bell\x07del\x7f", "nul\\u{0}bell\\u{7}del\\u{7f}"),
            ("c1 \u{9b}31m", "c1 \\u{9b}31m"),
            ("abc\u{202e}fed", "abc\\u{202e}fed"),
            ("naïve ✓ 日本", "naïve ✓ 日本"),
            ("a \\n stays", "a \\n stays"),
        ];
        for (text, want) in cases {
            assert_eq!(escape(text), want, "{text:?}");
            assert_eq!(escape(&escape(text)), want, "escaping twice changes nothing: {text:?}");
            assert!(!escape(text).chars().any(char::is_control), "{text:?}");
        }
    }
}
