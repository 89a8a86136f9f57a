//! A model-based property test: random appends (expected versions, duplicate keys), reads,
//! subscriptions, cursor acks, checkpoints, reopens and power losses, against a simple
//! in-memory model.

use std::collections::HashMap;

use proptest::prelude::*;
use spool::{Appended, ExpectedVersion, Filter, Seq, Spool, SpoolError, Subscription};

use crate::common::{body, event, keyed, part, stream};
use crate::crash::small_config;
use crate::sim::SimDisk;

const STREAMS: [&str; 3] = ["decoder/A", "decoder/B", "input/x"];

#[derive(Debug, Clone)]
enum Expect {
    Any,
    NoStream,
    /// The current version plus this (-1, 0, +1).
    Relative(i8),
}

#[derive(Debug, Clone)]
enum Op {
    /// Parts: stream index, expectation, events (each with an optional key 0..6).
    Append(Vec<(usize, Expect, Vec<Option<u8>>)>),
    Ack {
        cursor: usize,
        back: u8,
    },
    ReadStream {
        stream: usize,
        from: u8,
    },
    Checkpoint,
    Reopen,
    PowerLoss(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let expect = prop_oneof![
        3 => Just(Expect::Any),
        1 => Just(Expect::NoStream),
        3 => (-1i8..=1).prop_map(Expect::Relative),
    ];
    let part = (
        0..STREAMS.len(),
        expect,
        prop::collection::vec(prop::option::weighted(0.4, 0u8..6), 1..4),
    );
    prop_oneof![
        8 => prop::collection::vec(part, 1..3).prop_map(Op::Append),
        2 => (0usize..2, 0u8..4).prop_map(|(cursor, back)| Op::Ack { cursor, back }),
        2 => (0..STREAMS.len(), 0u8..6).prop_map(|(stream, from)| Op::ReadStream { stream, from }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
        1 => any::<u64>().prop_map(Op::PowerLoss),
    ]
}

#[derive(Debug, Clone)]
struct ModelEvent {
    stream: usize,
    version: u64,
    body: Vec<u8>,
}

/// One part of an append as the model sees it: stream index, expectation, (key, body) pairs.
type ModelPart = (usize, ExpectedVersion, Vec<(Option<u8>, Vec<u8>)>);

#[derive(Default)]
struct Model {
    events: Vec<ModelEvent>,
    heads: HashMap<usize, u64>,
    keys: HashMap<u8, usize>,
    cursors: [u64; 2],
}

impl Model {
    /// The outcome the spool must give, and the new events, or the expected-version error.
    fn append(
        &mut self,
        parts: &[ModelPart],
    ) -> Result<Vec<Appended>, (usize, ExpectedVersion, u64)> {
        let mut heads = self.heads.clone();
        let mut keys: HashMap<u8, Appended> = self
            .keys
            .iter()
            .map(|(k, i)| {
                let e = &self.events[*i];
                (
                    *k,
                    Appended {
                        seq: Seq(*i as u64 + 1),
                        version: e.version,
                        duplicate: true,
                    },
                )
            })
            .collect();
        let mut out = Vec::new();
        let mut new = Vec::new();
        let mut new_keys = Vec::new();
        for (s, expected, events) in parts {
            let mut current = heads.get(s).copied().unwrap_or(0);
            let all_dup = events.iter().enumerate().all(|(i, (k, _))| {
                k.is_some_and(|k| {
                    keys.contains_key(&k) || events[..i].iter().any(|(e, _)| *e == Some(k))
                })
            });
            if !all_dup && !expected.matches(current) {
                return Err((*s, *expected, current));
            }
            for (k, b) in events {
                if let Some(k) = k
                    && let Some(found) = keys.get(k)
                {
                    out.push(*found);
                    continue;
                }
                current += 1;
                let seq = Seq((self.events.len() + new.len()) as u64 + 1);
                let a = Appended {
                    seq,
                    version: current,
                    duplicate: false,
                };
                if let Some(k) = k {
                    keys.insert(
                        *k,
                        Appended {
                            duplicate: true,
                            ..a
                        },
                    );
                    new_keys.push((*k, seq.0 as usize - 1));
                }
                out.push(a);
                new.push(ModelEvent {
                    stream: *s,
                    version: current,
                    body: b.clone(),
                });
            }
            heads.insert(*s, current);
        }
        self.events.extend(new);
        self.heads = heads;
        self.keys.extend(new_keys);
        Ok(out)
    }
}

struct Harness {
    disk: SimDisk,
    spool: Spool,
    sub: Subscription,
    seen_by_sub: usize,
}

impl Harness {
    /// Close the spool (the subscription holds its database too) and open `disk`.
    fn reopen(&mut self, disk: SimDisk) {
        let position = self.sub.position();
        let placeholder = Spool::open_with_storage(SimDisk::new().storage(), small_config())
            .expect("a placeholder spool");
        self.sub = placeholder.subscribe(Filter::all(), None);
        drop(std::mem::replace(&mut self.spool, placeholder));
        self.spool = Spool::open_with_storage(disk.storage(), small_config()).expect("reopen");
        self.disk = disk;
        self.sub = self.spool.subscribe(Filter::all(), Some(position));
    }

    fn check(&mut self, model: &Model) {
        let all = self.spool.read_global(Seq::FIRST, 10_000).unwrap();
        assert_eq!(all.len(), model.events.len(), "event count");
        for (e, m) in all.iter().zip(&model.events) {
            assert_eq!(e.stream.as_str(), STREAMS[m.stream]);
            assert_eq!(e.version, m.version);
            assert_eq!(body(e), m.body);
        }
        while let Some(e) = self.sub.try_next().unwrap() {
            assert_eq!(
                e.seq.0 as usize,
                self.seen_by_sub + 1,
                "subscription in order, no gap"
            );
            assert_eq!(body(&e), model.events[self.seen_by_sub].body);
            self.seen_by_sub += 1;
        }
        assert_eq!(
            self.seen_by_sub,
            model.events.len(),
            "subscription caught up"
        );
        for (i, name) in ["uplink", "display"].iter().enumerate() {
            assert_eq!(self.spool.cursor(name).unwrap().0, model.cursors[i]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_spool_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let disk = SimDisk::new();
        let spool = Spool::open_with_storage(disk.storage(), small_config()).unwrap();
        let sub = spool.subscribe(Filter::all(), Some(Seq::FIRST));
        let mut h = Harness { disk, spool, sub, seen_by_sub: 0 };
        let mut model = Model::default();
        let mut counter = 0u32;
        for op in ops {
            match op {
                Op::Append(parts) => {
                    let mut model_parts = Vec::new();
                    let mut batch = Vec::new();
                    for (s, expect, events) in parts {
                        let current = model.heads.get(&s).copied().unwrap_or(0);
                        let expected = match expect {
                            Expect::Any => ExpectedVersion::Any,
                            Expect::NoStream => ExpectedVersion::NoStream,
                            Expect::Relative(d) => ExpectedVersion::Exact(current.saturating_add_signed(i64::from(d))),
                        };
                        let mut m_events = Vec::new();
                        let mut s_events = Vec::new();
                        for k in events {
                            counter += 1;
                            let b = counter.to_le_bytes().to_vec();
                            s_events.push(match k {
                                Some(k) => keyed(&b, &format!("key-{k}")),
                                None => event(&b),
                            });
                            m_events.push((k, b));
                        }
                        model_parts.push((s, expected, m_events));
                        batch.push(part(STREAMS[s], expected, s_events));
                    }
                    let expected = model.append(&model_parts);
                    let got = h.spool.append_blocking(batch);
                    match (expected, got) {
                        (Ok(e), Ok(g)) => prop_assert_eq!(e, g),
                        (Err((s, exp, actual)), Err(SpoolError::WrongExpectedVersion { stream: gs, expected: ge, actual: ga })) => {
                            prop_assert_eq!(stream(STREAMS[s]), gs);
                            prop_assert_eq!(exp, ge);
                            prop_assert_eq!(actual, ga);
                        }
                        (e, g) => prop_assert!(false, "model {:?}, spool {:?}", e, g),
                    }
                }
                Op::Ack { cursor, back } => {
                    let head = model.events.len() as u64;
                    let seq = head.saturating_sub(u64::from(back));
                    h.spool.ack_blocking(["uplink", "display"][cursor], Seq(seq)).unwrap();
                    model.cursors[cursor] = model.cursors[cursor].max(seq);
                }
                Op::ReadStream { stream: s, from } => {
                    let got = h.spool.read_stream(&stream(STREAMS[s]), u64::from(from), 100).unwrap();
                    let want: Vec<&ModelEvent> = model.events.iter()
                        .filter(|e| e.stream == s && e.version >= u64::from(from).max(1))
                        .collect();
                    prop_assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(want) {
                        prop_assert_eq!(g.version, w.version);
                        prop_assert_eq!(body(g), w.body.clone());
                    }
                    let last = h.spool.last_in_stream(&stream(STREAMS[s])).unwrap().map_or(0, |e| e.version);
                    prop_assert_eq!(last, model.heads.get(&s).copied().unwrap_or(0));
                }
                Op::Checkpoint => h.spool.checkpoint_blocking().unwrap(),
                Op::Reopen => {
                    let disk = h.disk.clone();
                    h.reopen(disk);
                }
                Op::PowerLoss(seed) => {
                    h.disk.crash();
                    let lost = h.disk.after_power_loss(seed);
                    h.reopen(lost);
                }
            }
            h.check(&model);
        }
        let report = h.spool.verify().unwrap();
        prop_assert!(report.is_ok(), "{:?}", report.problems);
    }
}
