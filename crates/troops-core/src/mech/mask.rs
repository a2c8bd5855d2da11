//! Masking: a run's secret values never reach what troops shows or keeps (the pusher, `troops
//! deploy`, output.log, run.json, the published status, the notify command). Each value becomes
//! `[secret:NAME]` wherever it appears in bytes troops passes on, raw or as JSON encoders write it:
//! escaped minimally (serde_json, JavaScript), with every non-ASCII character as `\uXXXX` (Python's
//! `json.dumps`, whose default is `ensure_ascii`), or HTML-safe (Go's `encoding/json`).
//!
//! What must stay true: bytes are masked before anything escapes, quotes or cuts them, so no
//! escaping hides a value and no cut shows part of one; every byte of every occurrence is masked,
//! also where occurrences of several values overlap; a stream is masked as it flows, holding back
//! only a tail that may still begin a value (nothing, when it ends with a newline no value spans);
//! and the work is linear in the bytes masked: one Aho-Corasick automaton over every form of every
//! value, stepped once per byte however many and however long the values are, plus a note of each
//! occurrence found. Its size grows with the values' (about 20 bytes for each byte of each form),
//! and it lives for one run.

use std::collections::HashSet;
use std::sync::Arc;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, MatchKind};

use crate::model::error::{Error, Result};

/// Values (and lines of values) shorter than this are not masked: masking `on` or `1` everywhere
/// would garble the output and still tell the value.
pub const MIN_MASKED: usize = 6;

/// Replaces secret values in bytes with `[secret:NAME]`: in a stream of writes ([`Masker::mask`],
/// [`Masker::release`]) or in whole buffers ([`Masker::masked`], [`Masker::masked_cut`]). Masked
/// are the whole value, each of its lines, and the value of each `KEY=VALUE` line (an env file),
/// when at least `MIN_MASKED` bytes long, each in every form of [`forms`]. A stretch of output
/// where occurrences overlap or nest becomes one replacement per value in it.
#[derive(Clone, Default)]
pub struct Masker {
    /// None: no value to mask.
    values: Option<Arc<Values>>,
    stream: Stream,
}

/// The values, compiled: shared by every clone of a masker.
struct Values {
    automaton: NFA,
    start: StateID,
    /// The value each pattern (by pattern id) is a form of.
    owner: Vec<usize>,
    /// `[secret:NAME]` of each value.
    replacement: Vec<Vec<u8>>,
    /// How many bytes of some pattern's start each state of the automaton stands for (the
    /// longest tail of the bytes seen so far that may still begin an occurrence), by state.
    depth: Vec<(StateID, u32)>,
    /// The longest pattern.
    longest: usize,
}

/// Where a stream of writes stands.
#[derive(Clone, Default)]
struct Stream {
    /// The automaton's state after every byte given; `None`: the start.
    state: Option<StateID>,
    /// Bytes given and not yet written: a tail that may begin an occurrence.
    held: Vec<u8>,
    /// Occurrences found and not yet written: start and end in `held`, and the value.
    found: Vec<(usize, usize, usize)>,
    /// The last thing written was a replacement whose occurrences reach this far into `held`.
    covered: usize,
    /// The values that replacement named.
    named: Vec<usize>,
}

impl Masker {
    /// A masker of `values` (name, value); an error when they are too large for one automaton,
    /// since a run must not show what cannot be masked.
    pub fn new(values: &[(String, Vec<u8>)]) -> Result<Masker> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut owner = Vec::new();
        let mut seen = HashSet::new();
        for (index, (_, value)) in values.iter().enumerate() {
            for piece in pieces(value) {
                for form in forms(&piece) {
                    if seen.insert(form.clone()) {
                        patterns.push(form);
                        owner.push(index);
                    }
                }
            }
        }
        if patterns.is_empty() {
            return Ok(Masker::default());
        }
        let too_large = |e: &dyn std::fmt::Display| {
            let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
            Error::Input(format!("the secrets {} are too large to mask in output: {e}", names.join(", ")))
        };
        let automaton = NFA::builder()
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(&patterns)
            .map_err(|e| too_large(&e))?;
        let start = automaton.start_state(Anchored::No).map_err(|e| too_large(&e))?;
        // Each state reached on a pattern's first k bytes from the start stands for those k bytes.
        let mut depth = vec![(start, 0)];
        for pattern in &patterns {
            let mut state = start;
            for (k, byte) in pattern.iter().enumerate() {
                state = automaton.next_state(Anchored::No, state, *byte);
                depth.push((state, u32::try_from(k + 1).map_err(|e| too_large(&e))?));
            }
        }
        // A state reached twice stands for the same bytes; the most is kept, should it not.
        depth.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        depth.dedup_by_key(|(state, _)| *state);
        depth.shrink_to_fit();
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let replacement = values.iter().map(|(name, _)| format!("[secret:{name}]").into_bytes()).collect();
        let values = Values { automaton, start, owner, replacement, depth, longest };
        Ok(Masker { values: Some(Arc::new(values)), stream: Stream::default() })
    }

    /// `buf`, the next bytes of a stream, masked, less a tail held back that may begin a value
    /// (written by a later call, or by `release`).
    pub fn mask(&mut self, buf: &[u8]) -> Vec<u8> {
        let Some(values) = &self.values else { return buf.to_vec() };
        self.stream.feed(values, buf);
        let live = self.stream.state.map_or(0, |s| values.depth_of(s));
        let upto = self.stream.held.len().saturating_sub(live);
        self.stream.write(values, upto)
    }

    /// What is held back, masked as far as it can be (the end of a stream, which no later byte
    /// completes); the stream starts afresh after it.
    pub fn release(&mut self) -> Vec<u8> {
        let Some(values) = &self.values else { return Vec::new() };
        let out = self.stream.write(values, self.stream.held.len());
        self.stream = Stream::default();
        out
    }

    /// `bytes`, whole (nothing before or after them), masked.
    pub fn masked(&self, bytes: &[u8]) -> Vec<u8> {
        let mut fresh = Masker { values: self.values.clone(), stream: Stream::default() };
        let mut out = fresh.mask(bytes);
        out.extend(fresh.release());
        out
    }

    /// [`Masker::masked`] for text.
    pub fn masked_text(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.masked(text.as_bytes())).into_owned()
    }

    /// `bytes`, cut short by a read cap, masked: a tail that may begin a value (whose rest the
    /// cap kept out) is dropped, not shown.
    pub fn masked_cut(&self, bytes: &[u8]) -> Vec<u8> {
        Masker { values: self.values.clone(), stream: Stream::default() }.mask(bytes)
    }
}

impl Values {
    /// The bytes `state` stands for; for a state not on record, all there may be.
    fn depth_of(&self, state: StateID) -> usize {
        match self.depth.binary_search_by_key(&state, |(s, _)| *s) {
            Ok(i) => self.depth[i].1 as usize,
            Err(_) => self.longest,
        }
    }
}

impl Stream {
    /// Steps the automaton over `buf`, noting the occurrences that end in it, and holds it.
    fn feed(&mut self, values: &Values, buf: &[u8]) {
        let automaton = &values.automaton;
        let mut state = self.state.unwrap_or(values.start);
        let base = self.held.len();
        for (i, byte) in buf.iter().enumerate() {
            state = automaton.next_state(Anchored::No, state, *byte);
            if automaton.is_special(state) && automaton.is_match(state) {
                let end = base + i + 1;
                for m in 0..automaton.match_len(state) {
                    let pattern = automaton.match_pattern(state, m);
                    let start = end - automaton.pattern_len(pattern);
                    self.found.push((start, end, values.owner[pattern.as_usize()]));
                }
            }
        }
        self.state = Some(state);
        self.held.extend_from_slice(buf);
    }

    /// Writes `held[..upto]` masked and keeps the rest. Every occurrence that starts before
    /// `upto` is known by then (one that is not complete yet starts in the live tail), so each
    /// stretch of overlapping occurrences is replaced once; one that runs on past `upto` goes on
    /// covering what is held (`covered`).
    fn write(&mut self, values: &Values, upto: usize) -> Vec<u8> {
        let (mut ready, rest): (Vec<_>, Vec<_>) = self.found.drain(..).partition(|f| f.0 < upto);
        ready.sort_unstable();
        let mut out = Vec::with_capacity(upto);
        let mut at = self.covered;
        for (start, end, value) in ready {
            if start < at {
                at = at.max(end);
            } else {
                out.extend_from_slice(&self.held[at..start]);
                self.named.clear();
                at = end;
            }
            if !self.named.contains(&value) {
                self.named.push(value);
                out.extend_from_slice(&values.replacement[value]);
            }
        }
        if at < upto {
            out.extend_from_slice(&self.held[at..upto]);
            at = upto;
        }
        self.covered = at - upto;
        if self.covered == 0 {
            self.named.clear();
        }
        self.held.drain(..upto);
        self.found = rest.into_iter().map(|(s, e, v)| (s - upto, e - upto, v)).collect();
        out
    }
}

/// What of `value` is masked: the whole, each line, and each `KEY=VALUE` line's value (unquoted),
/// trimmed, each when at least `MIN_MASKED` bytes long.
fn pieces(value: &[u8]) -> Vec<Vec<u8>> {
    let unquoted = |v: &[u8]| -> Vec<u8> {
        let v = v.trim_ascii();
        match (v.first(), v.last()) {
            (Some(b'"'), Some(b'"')) | (Some(b'\''), Some(b'\'')) if v.len() >= 2 => {
                v[1..v.len() - 1].to_vec()
            }
            _ => v.to_vec(),
        }
    };
    let lines = value.split(|b| *b == b'\n');
    let assigned = lines.clone().filter_map(|l| Some(&l[l.iter().position(|b| *b == b'=')? + 1..]));
    let candidates = std::iter::once(value.trim_ascii().to_vec())
        .chain(lines.map(|l| l.trim_ascii().to_vec()))
        .chain(assigned.map(unquoted));
    let mut seen = HashSet::new();
    candidates.filter(|piece| piece.len() >= MIN_MASKED && seen.insert(piece.clone())).collect()
}

/// How output may hold `piece`: as is, and inside a JSON string as common encoders escape it.
fn forms(piece: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![piece.to_vec()];
    if let Ok(text) = std::str::from_utf8(piece) {
        forms.extend(
            [Json::Minimal, Json::Ascii, Json::HtmlSafe].map(|style| json_escaped(text, style).into_bytes()),
        );
    }
    forms
}

/// How a JSON encoder escapes a string.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Json {
    /// Only what JSON requires: `"`, `\` and control characters (serde_json, JavaScript, Ruby).
    Minimal,
    /// Also everything outside printable ASCII, as `\uXXXX` (Python's `json.dumps`).
    Ascii,
    /// Also `<`, `>`, `&`, U+2028 and U+2029 (Go's `encoding/json`).
    HtmlSafe,
}

/// `text` as the inside of a JSON string written in `style`.
fn json_escaped(text: &str, style: Json) -> String {
    let mut out = String::with_capacity(text.len());
    let unicode = |out: &mut String, c: char| {
        for unit in c.encode_utf16(&mut [0; 2]) {
            out.push_str(&format!("\\u{unit:04x}"));
        }
    };
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => unicode(&mut out, c),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if style == Json::HtmlSafe => unicode(&mut out, c),
            c if style == Json::Ascii && !(' '..='~').contains(&c) => unicode(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(values: &[(&str, &str)]) -> Masker {
        let values: Vec<(String, Vec<u8>)> =
            values.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
        Masker::new(&values).unwrap()
    }

    /// `writes` through a stream, then what it held.
    fn streamed(masker: &Masker, writes: &[&[u8]]) -> String {
        let mut masker = masker.clone();
        let mut out = Vec::new();
        for w in writes {
            out.extend(masker.mask(w));
        }
        out.extend(masker.release());
        String::from_utf8(out).unwrap()
    }

    /// `text` masked whole, and streamed split at every offset, and byte by byte: all the same.
    fn masked(masker: &Masker, text: &str) -> String {
        let whole = String::from_utf8(masker.masked(text.as_bytes())).unwrap();
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(streamed(masker, &[a, b]), whole, "split at {cut} of {text:?}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(streamed(masker, &singles), whole, "byte by byte: {text:?}");
        whole
    }

    #[test]
    fn values_are_masked_also_when_split_across_writes_at_any_offset() {
        let db = masker(&[("db", "hunter2-secret\n")]);
        assert_eq!(masked(&db, "pw=hunter2-secret ok\n"), "pw=[secret:db] ok\n");
        assert_eq!(masked(&db, "a hunter!"), "a hunter!");
        assert_eq!(masked(&db, "hunter2-secrethunter2-secret"), "[secret:db][secret:db]");
        assert_eq!(streamed(&db, &[b"ends with hunt"]), "ends with hunt", "released at the end");
        // Held back: only what may begin a value; nothing after a newline no value spans.
        let mut stream = db.clone();
        assert_eq!(stream.mask(b"x hunter2-sec"), b"x ");
        assert_eq!(stream.mask(b"ret done\n"), b"[secret:db] done\n");
        assert_eq!(stream.mask(b"line\n"), b"line\n");
        assert!(stream.release().is_empty());
    }

    #[test]
    fn quotes_backslashes_and_json_escaped_values_are_masked() {
        let value = "pa\"ss\\wörd-€-😀\tend";
        let quoted = masker(&[("q", value)]);
        // Raw, serde_json / JavaScript (UTF-8 kept), Python's ensure_ascii, Go's HTML-safe form.
        let minimal = serde_json::to_string(value).unwrap();
        assert_eq!(minimal, "\"pa\\\"ss\\\\wörd-€-😀\\tend\"");
        let ascii = "\"pa\\\"ss\\\\w\\u00f6rd-\\u20ac-\\ud83d\\ude00\\tend\"";
        assert_eq!(masked(&quoted, &format!("password: {value}.")), "password: [secret:q].");
        for shown in [minimal, ascii.to_owned()] {
            assert_eq!(
                masked(&quoted, &format!("{{\"password\": {shown}}}")),
                "{\"password\": \"[secret:q]\"}"
            );
        }
        let html = masker(&[("h", "<tag>&amp;\u{2028}")]);
        assert_eq!(masked(&html, "\"\\u003ctag\\u003e\\u0026amp;\\u2028\""), "\"[secret:h]\"");
        // A multi-line value inside a JSON document, as json.dumps writes a config.
        let bundle = "-----BEGIN KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0BAQEF\n-----END KEY-----\n";
        let key = masker(&[("key", bundle)]);
        let doc = format!("{{\"key\": {}}}", serde_json::to_string(bundle).unwrap());
        assert_eq!(masked(&key, &doc), "{\"key\": \"[secret:key]\\n\"}");
    }

    #[test]
    fn overlapping_and_nested_values_show_no_byte_of_either() {
        let two = masker(&[("a", "abcdef-123"), ("b", "123-ghijkl")]);
        assert_eq!(masked(&two, "<abcdef-123-ghijkl>"), "<[secret:a][secret:b]>");
        assert_eq!(masked(&two, "<123-ghijkl abcdef-123>"), "<[secret:b] [secret:a]>");
        // One value inside another: the outer occurrence covers the inner.
        let nested = masker(&[("outer", "xx-inner-value-xx"), ("inner", "inner-value")]);
        assert_eq!(masked(&nested, "1 xx-inner-value-xx 2"), "1 [secret:outer][secret:inner] 2");
        assert_eq!(masked(&nested, "1 inner-value 2"), "1 [secret:inner] 2");
        // A whole multi-line value is one replacement; its lines, alone, each theirs.
        let env = masker(&[("app", "DB_PASSWORD=\"correct-horse\"\nLEVEL=prod\n")]);
        assert_eq!(masked(&env, "DB_PASSWORD=\"correct-horse\"\nLEVEL=prod"), "[secret:app]");
        assert_eq!(masked(&env, "correct-horse and LEVEL=prod"), "[secret:app] and [secret:app]");
    }

    #[test]
    fn short_values_and_lines_are_not_masked() {
        let env = masker(&[("app", "DB_PASSWORD=\"correct-horse\"\nLEVEL=prod\nPIN=12\n")]);
        assert_eq!(masked(&env, "prod 12"), "prod 12");
        assert!(masker(&[("pin", "1234")]).masked(b"pin 1234") == b"pin 1234");
        assert!(masker(&[]).masked(b"anything") == b"anything");
    }

    #[test]
    fn a_tail_cut_by_a_read_cap_is_dropped_not_shown() {
        let db = masker(&[("db", "hunter2-secret")]);
        assert_eq!(db.masked_cut(b"ok hunter2-secret, then hunter2-se"), b"ok [secret:db], then ");
        assert_eq!(db.masked(b"ok hunter2-se"), b"ok hunter2-se", "a whole text shows what is no value");
        assert_eq!(db.masked_cut(b"nothing to drop\n"), b"nothing to drop\n");
        // The cap cuts a multi-line value after its first line: that line is not shown either.
        let key = masker(&[("key", "first-line-of-it\nsecond-line-of-it")]);
        assert_eq!(key.masked_cut(b"key: first-line-of-it\nsecond-li"), b"key: ");
    }

    #[test]
    fn a_stream_holds_no_more_than_may_begin_a_value() {
        let key = masker(&[("key", "first-line-of-it\nsecond-line-of-it")]);
        let mut stream = key.clone();
        // The first line could begin the whole value: held until the next write tells.
        assert_eq!(stream.mask(b"a\nfirst-line-of-it\n"), b"a\n");
        assert_eq!(stream.mask(b"something else\n"), b"[secret:key]\nsomething else\n");
        assert_eq!(stream.mask(b"first-line-of-it\nsecond-line-of-it\n"), b"[secret:key]\n");
        assert!(stream.release().is_empty());
    }

    /// The figure BENCHMARKS.md records, measured here and printed, not asserted on time:
    /// `cargo test --release -p troops-core --lib masking_4_mb -- --nocapture`.
    #[test]
    fn masking_4_mb_of_output_with_a_4000_line_secret_is_linear() {
        use sha2::{Digest, Sha256};
        use std::time::Instant;
        // A CA bundle's worth: 4,000 distinct lines of 64 characters.
        let lines: Vec<String> =
            (0..4000u32).map(|i| format!("{:x}", Sha256::digest(i.to_le_bytes()))).collect();
        let bundle = lines.join("\n") + "\n";
        let started = Instant::now();
        let ca = Masker::new(&[("ca".into(), bundle.clone().into_bytes())]).unwrap();
        let built = started.elapsed();
        // Ordinary output with a line of the bundle now and then, and the bundle once, whole.
        let mut output = String::new();
        let mut n = 0;
        while output.len() < 4 << 20 {
            n += 1;
            output.push_str(&format!("step output line {n}: compiling module {} of the build\n", n * 7));
            if n % 1000 == 0 {
                output.push_str(&format!("loaded {}\n", lines[n % 4000]));
            }
            if n == 30_000 {
                output.push_str(&bundle);
            }
        }
        // The bundle itself, over and over: its start is live at every line, so the stream holds.
        let repeated = bundle.repeat((4 << 20) / bundle.len() + 1);
        for (what, text) in [("ordinary output", &output), ("the bundle, repeated", &repeated)] {
            let started = Instant::now();
            let mut stream = ca.clone();
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(16 * 1024) {
                out.extend(stream.mask(chunk));
            }
            out.extend(stream.release());
            let took = started.elapsed();
            let out = String::from_utf8(out).unwrap();
            assert!(lines.iter().all(|l| !out.contains(l.as_str())), "{what}: a line of the bundle shows");
            let values = ca.values.as_ref().unwrap();
            eprintln!(
                "masking {:.1} MB of {what} with a {}-line secret took {took:?} (building the masker: {built:?}; \
                 {} patterns, {} states, automaton {:.1} MiB and depths {:.1} MiB)",
                text.len() as f64 / 1e6,
                lines.len(),
                values.owner.len(),
                values.depth.len(),
                values.automaton.memory_usage() as f64 / (1 << 20) as f64,
                (values.depth.capacity() * std::mem::size_of::<(StateID, u32)>()) as f64 / (1 << 20) as f64
            );
            if what == "ordinary output" {
                assert_eq!(
                    out.matches("[secret:ca]").count(),
                    n / 1000 + 1,
                    "one per line shown, one for the bundle"
                );
            } else {
                assert_eq!(out, "[secret:ca]\n".repeat(repeated.len() / bundle.len()));
            }
        }
    }

    /// The masking the automaton must agree with, found the slow way: every occurrence of every
    /// form by comparing at every offset, each stretch of overlapping ones replaced once per value.
    fn reference(values: &[(String, Vec<u8>)], text: &[u8]) -> Vec<u8> {
        let mut patterns: Vec<(Vec<u8>, usize)> = Vec::new();
        for (index, (_, value)) in values.iter().enumerate() {
            for form in pieces(value).iter().flat_map(|p| forms(p)) {
                if patterns.iter().all(|(p, _)| *p != form) {
                    patterns.push((form, index));
                }
            }
        }
        let mut found: Vec<(usize, usize, usize)> = Vec::new();
        for start in 0..text.len() {
            for (pattern, owner) in &patterns {
                if text[start..].starts_with(pattern) {
                    found.push((start, start + pattern.len(), *owner));
                }
            }
        }
        found.sort();
        let (mut out, mut at, mut named) = (Vec::new(), 0, Vec::new());
        for (start, end, owner) in found {
            if start >= at {
                out.extend_from_slice(&text[at..start]);
                named.clear();
            }
            at = at.max(end);
            if !named.contains(&owner) {
                named.push(owner);
                out.extend_from_slice(format!("[secret:{}]", values[owner].0).as_bytes());
            }
        }
        out.extend_from_slice(&text[at.min(text.len())..]);
        out
    }

    proptest::proptest! {
        /// Values and text from a few bytes, so that occurrences overlap, nest and repeat; the
        /// text written in pieces cut anywhere.
        #[test]
        fn a_stream_cut_anywhere_masks_as_the_slow_reference_does(
            values in proptest::collection::vec(proptest::collection::vec(proptest::sample::select(b"ab\n=\"\\".to_vec()), 6..14), 1..4),
            text in proptest::collection::vec(proptest::sample::select(b"ab\n=\"\\x".to_vec()), 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let values: Vec<(String, Vec<u8>)> =
                values.into_iter().enumerate().map(|(i, v)| (format!("v{i}"), v)).collect();
            // The text holds the values too, whole, next to each other and in JSON form.
            let mut text = text;
            for (_, value) in &values {
                text.extend_from_slice(value);
                text.extend_from_slice(json_escaped(&String::from_utf8_lossy(value), Json::Minimal).as_bytes());
            }
            let masker = Masker::new(&values).unwrap();
            let want = reference(&values, &text);
            proptest::prop_assert_eq!(&masker.masked(&text), &want);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort();
            let mut stream = masker.clone();
            let (mut out, mut from) = (Vec::new(), 0);
            for cut in cuts.into_iter().chain([text.len()]) {
                out.extend(stream.mask(&text[from..cut]));
                from = cut;
            }
            out.extend(stream.release());
            proptest::prop_assert_eq!(out, want);
        }
    }
}
