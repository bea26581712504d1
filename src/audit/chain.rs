//! The tamper-evident form of audit lines: each line carries its chain's
//! name, a sequence number, the previous line's hash and its own hash.
//!
//! A line is `{"chain":C,"seq":N,"prev":P,<event fields>,"hash":H}` where
//! `H = hex(SHA-256(line without ,"hash":H))` — the exact bytes written, so
//! verifying needs no re-encoding — and `P` is the hash of the chain's
//! previous line (64 zeros for the first). Several chains may interleave in
//! one stream (the broker and AgentAuth of `atb dev`); each is checked on
//! its own. A chain starts again at `seq` 0 with the zero `prev` when a
//! process starts without a file to continue. When the writer knows the
//! chain's last intact line (a file whose last line was torn), the new
//! start's first line carries `"restart":{"after_seq":N,"after_hash":H}`,
//! linking it to that line. A restart inside a stream is a finding of
//! [`verify`] unless the caller accepts restarts that link to the chain's
//! last line (a torn line right before such a restart is then accepted
//! too); an unlinked restart is always a finding, so lines cut out of the
//! middle cannot be hidden behind a fresh start. Anything else out of
//! order is a break.
//!
//! A torn tail — a last line without its newline and without a hash
//! suffix: a write cut short (the writer was killed mid-write) — is not a
//! break: [`verify`]
//! checks every complete line before it and reports the tail apart
//! ([`Verification::torn_tail`]; `atb audit verify` exits 3). Only the very
//! end of a stream can be torn this way: an unreadable line followed by a
//! newline is a break. A file sink cuts such a tail off when it starts
//! (`audit::open_file`), so a restarted file verifies whole.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// `prev` of a chain's first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_FIELD: &str = ",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = HASH_FIELD.len() + 64 + 2;

/// Where a chain stands: the next line's `seq` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub prev: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        Self {
            seq: 0,
            prev: GENESIS.to_owned(),
        }
    }
}

/// The last intact line of a chain that starts again: what the new
/// start's first line links to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartLink {
    pub after_seq: u64,
    pub after_hash: String,
}

#[derive(Serialize)]
struct Linked<'a, E> {
    chain: &'a str,
    seq: u64,
    prev: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<&'a RestartLink>,
    #[serde(flatten)]
    event: &'a E,
}

/// A chain being written.
pub struct Chain {
    name: &'static str,
    head: ChainHead,
    /// Carried by the first line of a restarted chain.
    restart: Option<RestartLink>,
}

impl Chain {
    pub fn new(name: &'static str, head: ChainHead) -> Self {
        Self {
            name,
            head,
            restart: None,
        }
    }

    /// A new start (seq 0) whose first line links to `after`, the chain's
    /// last intact line.
    pub fn restarted(name: &'static str, after: RestartLink) -> Self {
        Self {
            name,
            head: ChainHead::default(),
            restart: Some(after),
        }
    }

    /// Where a file's tail leaves `name`: continued from its last line,
    /// restarted with a link to its last intact line, or started fresh.
    pub fn resume(name: &'static str, tail: Tail) -> Self {
        match tail {
            Tail {
                head: Some(head), ..
            } => Self::new(name, head),
            Tail {
                last_intact: Some(after),
                ..
            } => Self::restarted(name, after),
            _ => Self::new(name, ChainHead::default()),
        }
    }

    /// The next line for `event` (without a newline), advancing the chain.
    pub fn seal<E: Serialize>(&mut self, event: &E) -> Result<String, serde_json::Error> {
        let mut line = serde_json::to_string(&Linked {
            chain: self.name,
            seq: self.head.seq,
            prev: &self.head.prev,
            restart: self.restart.as_ref(),
            event,
        })?;
        self.restart = None;
        let hash = hex(&Sha256::digest(line.as_bytes()));
        line.pop(); // the closing brace
        line.push_str(HASH_FIELD);
        line.push_str(&hash);
        line.push_str("\"}");
        self.head = ChainHead {
            seq: self.head.seq + 1,
            prev: hash,
        };
        Ok(line)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What one line says about its chain, once its own hash checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineLink {
    pub chain: String,
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    /// A restart's link to the chain's last intact line.
    pub restart: Option<RestartLink>,
}

/// Why a line is not an intact audit line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("no hash at the end of the line")]
    NoHash,
    #[error("the hash is not 64 lower-case hex digits")]
    BadHash,
    #[error("the line's content does not match its hash")]
    Altered,
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("no {0} field of the right type")]
    Field(&'static str),
    #[error("not UTF-8")]
    NotUtf8,
}

/// Checks one line's own hash and reads its links.
pub fn read_line(line: &str) -> Result<LineLink, LineError> {
    let cut = line
        .len()
        .checked_sub(HASH_SUFFIX_LEN)
        .filter(|&at| line.is_char_boundary(at) && line[at..].starts_with(HASH_FIELD))
        .filter(|_| line.ends_with("\"}"))
        .ok_or(LineError::NoHash)?;
    let hash = &line[cut + HASH_FIELD.len()..line.len() - 2];
    if !hash
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(LineError::BadHash);
    }
    let body = format!("{}}}", &line[..cut]);
    if hex(&Sha256::digest(body.as_bytes())) != hash {
        return Err(LineError::Altered);
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| LineError::NotJson(e.to_string()))?;
    let text = |k: &'static str| v.get(k).and_then(|f| f.as_str()).ok_or(LineError::Field(k));
    Ok(LineLink {
        chain: text("chain")?.to_owned(),
        seq: v
            .get("seq")
            .and_then(|f| f.as_u64())
            .ok_or(LineError::Field("seq"))?,
        prev: text("prev")?.to_owned(),
        hash: hash.to_owned(),
        restart: match v.get("restart") {
            None => None,
            Some(r) => Some(RestartLink {
                after_seq: r
                    .get("after_seq")
                    .and_then(|x| x.as_u64())
                    .ok_or(LineError::Field("restart.after_seq"))?,
                after_hash: r
                    .get("after_hash")
                    .and_then(|x| x.as_str())
                    .ok_or(LineError::Field("restart.after_hash"))?
                    .to_owned(),
            }),
        },
    })
}

/// Whether `line` (the stream's last, without a newline) is a torn write:
/// a prefix of a line cut before its hash suffix. A line that carries a
/// hash suffix but fails its check was altered, not torn.
pub fn is_torn(line: &[u8]) -> bool {
    match std::str::from_utf8(line) {
        Err(_) => true,
        Ok(l) => matches!(read_line(l), Err(LineError::NoHash)),
    }
}

/// The outcome of checking a stream of lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verification {
    pub lines: u64,
    /// Per chain: lines, and how many times it started (at seq 0).
    pub chains: BTreeMap<String, (u64, u64)>,
    /// Restarts accepted because they link to their chain's last line.
    pub linked_restarts: u64,
    /// The first problem, with its 1-based line number.
    pub broken: Option<(u64, String)>,
    /// A torn tail: the last line's 1-based number and its length in
    /// bytes; it ends without a newline and is not an intact line. Not
    /// counted in `lines`, and not a break.
    pub torn_tail: Option<(u64, usize)>,
}

/// Checks every line of `input`; stops at the first break. A restart of a
/// chain already seen is a finding unless `accept_linked_restarts` and it
/// links to that chain's last line (then one torn line right before it is
/// accepted too: the writer died mid-line and restarted). An unreadable
/// last line without a newline is a torn tail, reported apart.
pub fn verify(
    mut input: impl BufRead,
    accept_linked_restarts: bool,
) -> std::io::Result<Verification> {
    let mut result = Verification::default();
    let mut heads: BTreeMap<String, ChainHead> = BTreeMap::new();
    // An unreadable line waiting to see whether a linked restart follows.
    let mut torn: Option<(u64, String)> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let terminated = line.last() == Some(&b'\n');
        if terminated {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        result.lines += 1;
        let n = result.lines;
        let read = std::str::from_utf8(&line)
            .map_err(|_| LineError::NotUtf8)
            .and_then(read_line);
        let link = match read {
            Ok(l) => l,
            // Only the end of the stream lacks a newline.
            Err(_) if !terminated && torn.is_none() && is_torn(&line) => {
                result.lines -= 1;
                result.torn_tail = Some((n, line.len()));
                break;
            }
            Err(e) if accept_linked_restarts && torn.is_none() => {
                torn = Some((n, e.to_string()));
                continue;
            }
            Err(e) => {
                result.broken = torn.take().or(Some((n, e.to_string())));
                break;
            }
        };
        let starts = link.seq == 0 && link.prev == GENESIS;
        let head = heads.get(&link.chain);
        let linked = match (head, &link.restart) {
            (Some(h), Some(r)) => r.after_seq + 1 == h.seq && r.after_hash == h.prev,
            _ => false,
        };
        let problem = match head {
            _ if starts && link.restart.is_none() && head.is_none() => None,
            _ if starts && link.restart.is_some() && head.is_none() => Some(format!(
                "chain {} restarts after lines that are not in this stream",
                link.chain
            )),
            _ if starts && !accept_linked_restarts => Some(format!(
                "chain {} starts again at seq 0 (a restart inside the stream; \
                 --accept-linked-restarts accepts restarts linked to the chain's last line)",
                link.chain
            )),
            _ if starts && !linked => Some(format!(
                "chain {} starts again at seq 0 without a link to its last line (lines may be missing)",
                link.chain
            )),
            _ if starts => None,
            None => Some(format!(
                "chain {} begins at seq {} instead of 0 (earlier lines are missing)",
                link.chain, link.seq
            )),
            Some(head) if head.seq != link.seq => Some(format!(
                "chain {} expected seq {}, found {} (lines missing or reordered)",
                link.chain, head.seq, link.seq
            )),
            Some(head) if head.prev != link.prev => Some(format!(
                "chain {} seq {}: prev does not match the previous line's hash",
                link.chain, link.seq
            )),
            Some(_) => None,
        };
        if let Some(p) = problem {
            result.broken = torn.take().or(Some((n, p)));
            break;
        }
        // A torn line is accepted only right before a linked restart.
        if torn.is_some() && !(starts && linked) {
            result.broken = torn.take();
            break;
        }
        torn = None;
        result.linked_restarts += u64::from(starts && linked);
        let entry = result.chains.entry(link.chain.clone()).or_default();
        entry.0 += 1;
        entry.1 += u64::from(starts);
        heads.insert(
            link.chain,
            ChainHead {
                seq: link.seq + 1,
                prev: link.hash,
            },
        );
    }
    if result.broken.is_none() {
        result.broken = torn;
    }
    Ok(result)
}

/// What the end of an existing audit file says about `chain`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Where to continue: the chain's line is the file's last intact line
    /// with nothing torn after it.
    pub head: Option<ChainHead>,
    /// The chain's last intact line, even with torn lines after it (what a
    /// restart links to).
    pub last_intact: Option<RestartLink>,
}

/// Where `chain` stands at the end of an existing audit file.
pub fn tail_of(input: impl BufRead, chain: &str) -> std::io::Result<Tail> {
    let mut tail = Tail::default();
    for line in input.split(b'\n') {
        let line = line?;
        let read = std::str::from_utf8(&line)
            .map_err(|_| LineError::NotUtf8)
            .and_then(|l| read_line(l.strip_suffix('\r').unwrap_or(l)));
        match read {
            Ok(link) if link.chain == chain => {
                tail.last_intact = Some(RestartLink {
                    after_seq: link.seq,
                    after_hash: link.hash.clone(),
                });
                tail.head = Some(ChainHead {
                    seq: link.seq + 1,
                    prev: link.hash,
                })
            }
            Ok(_) => {}
            Err(_) => tail.head = None,
        }
    }
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(chain: &mut Chain, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| chain.seal(&json!({"event": "decision", "i": i})).unwrap())
            .collect()
    }

    fn check(lines: &[String]) -> Verification {
        verify(lines.join("\n").as_bytes(), false).unwrap()
    }

    fn check_accepting(lines: &[String]) -> Verification {
        verify(lines.join("\n").as_bytes(), true).unwrap()
    }

    #[test]
    fn sealed_lines_verify_and_carry_the_event() {
        let mut c = Chain::new("broker", ChainHead::default());
        let l = lines(&mut c, 3);
        let v: serde_json::Value = serde_json::from_str(&l[1]).unwrap();
        assert_eq!(v["chain"], "broker");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["i"], 1);
        assert_eq!(v["prev"], read_line(&l[0]).unwrap().hash);
        let r = check(&l);
        assert_eq!(r.broken, None);
        assert_eq!(r.chains["broker"], (3, 1));
    }

    #[test]
    fn every_kind_of_tampering_is_found() {
        let mut c = Chain::new("broker", ChainHead::default());
        let l = lines(&mut c, 4);
        // An edited field.
        let mut edited = l.clone();
        edited[1] = edited[1].replace("\"i\":1", "\"i\":7");
        assert_eq!(check(&edited).broken.unwrap().0, 2);
        // A removed, a duplicated and a swapped line.
        let mut removed = l.clone();
        removed.remove(2);
        assert_eq!(check(&removed).broken.unwrap().0, 3);
        let mut duplicated = l.clone();
        duplicated.insert(2, l[1].clone());
        assert_eq!(check(&duplicated).broken.unwrap().0, 3);
        let mut swapped = l.clone();
        swapped.swap(1, 2);
        assert_eq!(check(&swapped).broken.unwrap().0, 2);
        // The head cut off.
        assert!(check(&l[1..]).broken.unwrap().1.contains("begins at seq 1"));
        // A re-hashed line whose prev is not the previous hash.
        let mut forged_chain = Chain::new(
            "broker",
            ChainHead {
                seq: 2,
                prev: "ab".repeat(32),
            },
        );
        let mut forged = l[..2].to_vec();
        forged.push(lines(&mut forged_chain, 1).remove(0));
        assert!(check(&forged).broken.unwrap().1.contains("prev"));
        // Garbage and a missing hash (ended by a newline: not a torn tail).
        let garbage = format!("{}\n{{}}\n", l[0]);
        let r = verify(garbage.as_bytes(), false).unwrap();
        assert_eq!(r.broken.unwrap().0, 2);
        // An altered last line without its newline is a break, not a torn
        // tail: a torn write never has the hash suffix.
        let r = check(&edited[..2]);
        assert_eq!((r.broken.unwrap().0, r.torn_tail), (2, None));
        assert!(read_line("").is_err());
        assert!(read_line("é").is_err());
    }

    #[test]
    fn interleaved_chains_and_restarts() {
        let mut broker = Chain::new("broker", ChainHead::default());
        let mut aa = Chain::new("agentauth", ChainHead::default());
        let mut l = Vec::new();
        for _ in 0..3 {
            l.extend(lines(&mut broker, 1));
            l.extend(lines(&mut aa, 2));
        }
        let r = check(&l);
        assert_eq!(r.broken, None);
        assert_eq!(r.chains["broker"], (3, 1));
        assert_eq!(r.chains["agentauth"], (6, 1));
        // A fresh start of a chain already in the stream is a finding,
        // accepted or not: it could hide lines cut out before it.
        let mut spliced = l.clone();
        spliced.extend(lines(&mut Chain::new("broker", ChainHead::default()), 2));
        let n = spliced.len() as u64 - 1;
        for r in [check(&spliced), check_accepting(&spliced)] {
            let (at, why) = r.broken.unwrap();
            assert_eq!(at, n, "{why}");
            assert!(why.contains("starts again at seq 0"), "{why}");
        }
        // A restart linked to the chain's last line: a finding by default,
        // accepted on request.
        let last = read_line(&l[l.len() - 3]).unwrap();
        let after = RestartLink {
            after_seq: last.seq,
            after_hash: last.hash,
        };
        let mut restarted = l.clone();
        restarted.extend(lines(&mut Chain::restarted("broker", after.clone()), 2));
        assert!(check(&restarted).broken.is_some());
        let r = check_accepting(&restarted);
        assert_eq!(r.broken, None);
        assert_eq!((r.linked_restarts, r.chains["broker"]), (1, (5, 2)));
        // Only the first line of the restart carries the link.
        let first: serde_json::Value = serde_json::from_str(&restarted[l.len()]).unwrap();
        assert_eq!(first["restart"]["after_seq"], 2);
        let second: serde_json::Value = serde_json::from_str(&restarted[l.len() + 1]).unwrap();
        assert!(second.get("restart").is_none());
        // A link to an earlier line (the lines after it cut out) is refused.
        let early = read_line(&l[0]).unwrap();
        let mut cut = l.clone();
        cut.extend(lines(
            &mut Chain::restarted(
                "broker",
                RestartLink {
                    after_seq: early.seq,
                    after_hash: early.hash,
                },
            ),
            1,
        ));
        assert!(check_accepting(&cut)
            .broken
            .unwrap()
            .1
            .contains("without a link"));
        // A torn line right before a linked restart is accepted with it;
        // a torn line anywhere else is a break.
        let mut torn = l.clone();
        torn.push("{\"chain\":\"broker\",\"se".into());
        torn.extend(lines(&mut Chain::restarted("broker", after), 1));
        assert_eq!(check_accepting(&torn).broken, None);
        assert_eq!(check(&torn).broken.unwrap().0, l.len() as u64 + 1);
        let mut torn_only = l.clone();
        torn_only.insert(2, "{\"chain\"".into());
        assert_eq!(check_accepting(&torn_only).broken.unwrap().0, 3);
        // A torn line that ends the stream (no newline, no hash suffix): a
        // torn tail, the lines before it verified.
        torn_only.truncate(3);
        for r in [check_accepting(&torn_only), check(&torn_only)] {
            assert_eq!((r.lines, r.broken, r.torn_tail), (2, None, Some((3, 8))));
        }
        // The same line ended by a newline is a break.
        let ended = format!("{}\n", torn_only.join("\n"));
        let r = verify(ended.as_bytes(), false).unwrap();
        assert_eq!((r.broken.unwrap().0, r.torn_tail), (3, None));
        // A break before a torn tail is still the break.
        let mut both = l.clone();
        both[1] = both[1].replace("\"i\":0", "\"i\":9");
        both.push("{\"ch".into());
        let r = check(&both);
        assert_eq!(r.broken.unwrap().0, 2);
    }

    #[test]
    fn a_file_is_continued_from_its_last_intact_line() {
        let mut c = Chain::new("broker", ChainHead::default());
        let mut l = lines(&mut c, 2);
        let text = l.join("\n");
        let tail = tail_of(text.as_bytes(), "broker").unwrap();
        let head = tail.head.unwrap();
        assert_eq!(head.seq, 2);
        let mut next = Chain::new("broker", head);
        l.extend(lines(&mut next, 2));
        assert_eq!(check(&l).broken, None);
        assert_eq!(
            tail_of(text.as_bytes(), "agentauth").unwrap(),
            Tail::default()
        );
        // A torn last line: start a new run, linked to the last intact line.
        let torn = format!("{text}\n{{\"chain\":\"broker\",\"seq\":2");
        let tail = tail_of(torn.as_bytes(), "broker").unwrap();
        assert_eq!(tail.head, None);
        let after = tail.last_intact.unwrap();
        assert_eq!(after.after_seq, 1);
        assert_eq!(after.after_hash, read_line(&l[1]).unwrap().hash);
    }
}
