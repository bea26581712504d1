//! The tamper-evident form of audit lines: each line carries its chain's
//! name, a sequence number, the previous line's hash and its own hash.
//!
//! A line is `{"chain":C,"seq":N,"prev":P,<event fields>,"hash":H}` where
//! `H = hex(SHA-256(line without ,"hash":H))` — the exact bytes written, so
//! verifying needs no re-encoding — and `P` is the hash of the chain's
//! previous line (64 zeros for the first). Several chains may interleave in
//! one stream (the broker and AgentAuth of `atb dev`); each is checked on
//! its own. A chain starts again at `seq` 0 with the zero `prev` when a
//! process starts without a file to continue; that start is reported, and
//! anything else out of order is a break.

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

#[derive(Serialize)]
struct Linked<'a, E> {
    chain: &'a str,
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    event: &'a E,
}

/// A chain being written.
pub struct Chain {
    name: &'static str,
    head: ChainHead,
}

impl Chain {
    pub fn new(name: &'static str, head: ChainHead) -> Self {
        Self { name, head }
    }

    /// The next line for `event` (without a newline), advancing the chain.
    pub fn seal<E: Serialize>(&mut self, event: &E) -> Result<String, serde_json::Error> {
        let mut line = serde_json::to_string(&Linked {
            chain: self.name,
            seq: self.head.seq,
            prev: &self.head.prev,
            event,
        })?;
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
    })
}

/// The outcome of checking a stream of lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verification {
    pub lines: u64,
    /// Per chain: lines, and how many times it started (at seq 0).
    pub chains: BTreeMap<String, (u64, u64)>,
    /// The first problem, with its 1-based line number.
    pub broken: Option<(u64, String)>,
}

/// Checks every line of `input`; stops at the first break.
pub fn verify(input: impl BufRead) -> std::io::Result<Verification> {
    let mut result = Verification::default();
    let mut heads: BTreeMap<String, ChainHead> = BTreeMap::new();
    for line in input.lines() {
        let line = line?;
        result.lines += 1;
        let n = result.lines;
        let link = match read_line(&line) {
            Ok(l) => l,
            Err(e) => {
                result.broken = Some((n, e.to_string()));
                break;
            }
        };
        let starts = link.seq == 0 && link.prev == GENESIS;
        let problem = match heads.get(&link.chain) {
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
            result.broken = Some((n, p));
            break;
        }
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
    Ok(result)
}

/// Where `chain` stands at the end of an existing audit file, to continue
/// it: `None` when the file has no intact line of that chain at its end
/// (then a new chain start is written).
pub fn head_of(input: impl BufRead, chain: &str) -> std::io::Result<Option<ChainHead>> {
    let mut head = None;
    for line in input.lines() {
        match read_line(&line?) {
            Ok(link) if link.chain == chain => {
                head = Some(ChainHead {
                    seq: link.seq + 1,
                    prev: link.hash,
                })
            }
            Ok(_) => {}
            Err(_) => head = None,
        }
    }
    Ok(head)
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
        verify(lines.join("\n").as_bytes()).unwrap()
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
        // Garbage and a missing hash.
        assert_eq!(check(&[l[0].clone(), "{}".into()]).broken.unwrap().0, 2);
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
        // A restart without a file to continue begins a new run.
        let mut restarted = Chain::new("broker", ChainHead::default());
        l.extend(lines(&mut restarted, 2));
        let r = check(&l);
        assert_eq!(r.broken, None);
        assert_eq!(r.chains["broker"], (5, 2));
        assert_eq!(r.chains["agentauth"], (6, 1));
    }

    #[test]
    fn a_file_is_continued_from_its_last_intact_line() {
        let mut c = Chain::new("broker", ChainHead::default());
        let mut l = lines(&mut c, 2);
        let text = l.join("\n");
        let head = head_of(text.as_bytes(), "broker").unwrap().unwrap();
        assert_eq!(head.seq, 2);
        let mut next = Chain::new("broker", head);
        l.extend(lines(&mut next, 2));
        assert_eq!(check(&l).broken, None);
        assert_eq!(head_of(text.as_bytes(), "agentauth").unwrap(), None);
        // A torn last line: start a new run rather than continue.
        let torn = format!("{text}\n{{\"chain\":\"broker\",\"seq\":2");
        assert_eq!(head_of(torn.as_bytes(), "broker").unwrap(), None);
    }
}
