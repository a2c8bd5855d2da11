//! The output of a run as its readers get it (the pusher, `troops deploy`, socket clients, the
//! run's output.log): what steps print, masked as it comes, and troops' own lines. troops speaks
//! through `Write` (`writeln!(out, "troops: ...")`); a step's bytes come through
//! [`Output::relay`]. So the rules live here, not in each message or each caller.
//!
//! What must stay true: each of troops' lines starts a line, whatever a step printed last without
//! a newline (people, and `troops push` reading the node's summary, find troops' lines there); no
//! byte from a step or from troops reaches a reader before it is masked.

use std::io::{self, Write};

use crate::mech::mask::Masker;

pub struct Output<'a> {
    sink: &'a mut dyn Write,
    mask: Masker,
    /// What was written to `sink` last does not end a line.
    mid_line: bool,
    /// troops' words of a line it has not ended yet.
    said: Vec<u8>,
}

impl<'a> Output<'a> {
    /// Output to `sink`, masking nothing until [`Output::set_mask`].
    pub fn new(sink: &'a mut dyn Write) -> Output<'a> {
        Output { sink, mask: Masker::default(), mid_line: false, said: Vec::new() }
    }

    /// Masks the values of `mask` from now on.
    pub fn set_mask(&mut self, mask: Masker) {
        self.mask = mask;
    }

    /// The masker of this output, for what troops records besides it (a failed check's error).
    pub fn mask(&self) -> &Masker {
        &self.mask
    }

    /// A step's bytes, as they come: masked, less a tail that may begin a secret value, written
    /// when the next bytes show it does not, or by [`Output::release`].
    pub fn relay(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.end_said()?;
        let masked = self.mask.mask(bytes);
        self.emit(&masked)
    }

    /// What masking holds back, masked as far as it can be: at the end of a step's output, which
    /// nothing after it completes.
    pub fn release(&mut self) -> io::Result<()> {
        self.end_said()?;
        let held = self.mask.release();
        self.emit(&held)
    }

    /// troops' line `line` (ending with a newline), masked, at the start of a line. What the mask
    /// holds back of a step's output stays held: it may yet be completed into a value.
    fn say(&mut self, line: &[u8]) -> io::Result<()> {
        if self.mid_line {
            self.emit(b"\n")?;
        }
        let masked = self.mask.masked(line);
        self.emit(&masked)
    }

    /// Says what troops wrote of a line without ending it, as a line of its own.
    fn end_said(&mut self) -> io::Result<()> {
        if self.said.is_empty() {
            return Ok(());
        }
        let mut line = std::mem::take(&mut self.said);
        line.push(b'\n');
        self.say(&line)
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(last) = bytes.last() else { return Ok(()) };
        self.mid_line = *last != b'\n';
        self.sink.write_all(bytes)
    }
}

/// troops' own words, said a line at a time (at its newline), each at the start of a line.
impl Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.said.extend_from_slice(buf);
        while let Some(end) = self.said.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.said.drain(..=end).collect();
            self.say(&line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

/// The start of a command's output, up to [`Kept::MAX`], and how much more there was: what a
/// person is shown of a preview command or of a reboot check that cannot tell, whatever it prints.
#[derive(Default)]
pub struct Kept {
    bytes: Vec<u8>,
    more: usize,
}

impl Kept {
    pub const MAX: usize = 64 * 1024;

    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.more > 0 {
            text.push_str(&format!("\n[{} more bytes not shown]\n", self.more));
        }
        text
    }
}

impl Write for Kept {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = Kept::MAX.saturating_sub(self.bytes.len()).min(buf.len());
        self.bytes.extend_from_slice(&buf[..room]);
        self.more += buf.len() - room;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Output that goes to `sink` and, a line at a time, to the log as well (`what` names it there):
/// for work of a trigger that no run record keeps, such as a reboot, so the daemon's log has it.
pub struct Logged<'a> {
    sink: &'a mut dyn Write,
    what: &'static str,
    line: Vec<u8>,
}

impl<'a> Logged<'a> {
    pub fn new(sink: &'a mut dyn Write, what: &'static str) -> Logged<'a> {
        Logged { sink, what, line: Vec::new() }
    }
}

impl Write for Logged<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(end) = self.line.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.line.drain(..=end).collect();
            tracing::info!(what = self.what, "{}", String::from_utf8_lossy(&line[..end]).trim_end());
        }
        self.sink.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

impl Drop for Logged<'_> {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            tracing::info!(what = self.what, "{}", String::from_utf8_lossy(&self.line).trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker() -> Masker {
        Masker::new(&[("db".into(), b"hunter2-secret".to_vec())]).unwrap()
    }

    #[test]
    fn troops_lines_start_a_line_whatever_a_step_printed_last() {
        let mut sink = Vec::new();
        let mut out = Output::new(&mut sink);
        writeln!(out, "==> build").unwrap();
        out.relay(b"compiling... done").unwrap();
        // A line `write_fmt` writes in pieces is one line all the same.
        let (run, steps) = (4, "1 of 1 steps");
        writeln!(out, "troops: run {run} succeeded: {steps}").unwrap();
        out.relay(b"line\n").unwrap();
        writeln!(out, "==> next").unwrap();
        write!(out, "troops: unended").unwrap();
        out.relay(b"more").unwrap();
        out.release().unwrap();
        drop(out);
        assert_eq!(
            String::from_utf8(sink).unwrap(),
            "==> build\ncompiling... done\ntroops: run 4 succeeded: 1 of 1 steps\nline\n==> next\n\
             troops: unended\nmore"
        );
    }

    #[test]
    fn step_bytes_and_troops_words_are_masked_and_a_held_tail_stays_held_across_troops_lines() {
        let mut sink = Vec::new();
        let mut out = Output::new(&mut sink);
        out.set_mask(masker());
        writeln!(out, "troops: the value is hunter2-secret").unwrap();
        out.relay(b"printing hunter2").unwrap();
        // A troops line while the step's output may still become the value: it comes first.
        writeln!(out, "troops: step `x` timed out").unwrap();
        out.relay(b"-secret\n").unwrap();
        out.relay(b"then hunter2-").unwrap();
        out.release().unwrap();
        writeln!(out, "troops: end").unwrap();
        drop(out);
        assert_eq!(
            String::from_utf8(sink).unwrap(),
            "troops: the value is [secret:db]\nprinting \ntroops: step `x` timed out\n[secret:db]\n\
             then hunter2-\ntroops: end\n"
        );
    }
}
