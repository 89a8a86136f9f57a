//! The stored bytes of every race event, pinned: postcard is not self-describing, so a reordered
//! variant or field would make old spools read as something else. A change here is a new variant or
//! a `V2` envelope, never an edit of these bytes.

use race::*;

fn meta() -> Meta {
    Meta {
        user: "jo".into(),
        reason: "r".into(),
        causation: Some("p1".into()),
    }
}

fn competitor() -> Competitor {
    Competitor {
        id: CompetitorId(3),
        number: "12".into(),
        name: "Al".into(),
        class: "Pro".into(),
        club: "VC".into(),
        transponders: vec![
            Transponder::Number(2906141),
            Transponder::Code("FL-94890".into()),
        ],
    }
}

/// One of each variant, with its index in the enum. The match makes a new variant fail to compile
/// here until it is pinned.
fn samples() -> Vec<(usize, RaceEvent)> {
    use RaceEvent::*;
    let session = SessionId(9);
    let passing = PassingRef {
        decoder: DecoderId(0x0007_1A5E),
        number: 41,
        rtc_time_us: 1_700_000_000_000_000,
    };
    let events = vec![
        CompetitorAdded(competitor()),
        CompetitorEdited(competitor()),
        CompetitorRemoved {
            id: CompetitorId(3),
        },
        LineDefined(LineDef {
            line: LineId(1),
            name: "fin".into(),
            kind: LineKind::Split(2),
            merge_window_us: 500_000,
            min_gap_us: 2_000_000,
        }),
        DecoderMapped {
            decoder: DecoderId(7),
            line: LineId(1),
            role: LoopRole::Backup,
        },
        DecoderUnmapped {
            decoder: DecoderId(7),
        },
        SessionCreated {
            session,
            name: "M1".into(),
            kind: SessionKind::Moto,
            settings: Settings::default(),
        },
        SettingsChanged {
            session,
            settings: Settings {
                limit: Limit::Time { us: 600_000_000 },
                min_lap: MinLap::Absolute { us: 20_000_000 },
                ..Settings::default()
            },
            meta: meta(),
        },
        SessionStarted {
            session,
            start: Start::FirstCrossing { armed_at_us: 5 },
        },
        Chequered { session, at_us: 6 },
        SessionEnded { session, at_us: 7 },
        RidersStaged {
            session,
            gates: vec![Staged {
                gate: 1,
                competitor: CompetitorId(3),
            }],
        },
        Decided {
            session,
            decision: Decision {
                meta: meta(),
                action: Action::ReassignPassing {
                    passing,
                    to: CompetitorId(4),
                },
            },
        },
        Undone {
            session,
            target_version: 12,
            meta: meta(),
        },
        StatusSet {
            session,
            status: ResultsStatus::Revised,
            meta: meta(),
        },
        SeriesCreated {
            series: SeriesId(2),
            name: "B10".into(),
            motos: vec![SessionId(1), SessionId(2)],
            settings: SeriesSettings {
                tie_break: TieBreak::RunOff,
                transfer: Transfer::PerMoto(race::bmx::TransferTable {
                    rows: vec![race::bmx::TransferRow {
                        riders: 4,
                        per_moto: vec![1, 1],
                    }],
                }),
            },
        },
    ];
    events
        .into_iter()
        .map(|e| {
            let index = match &e {
                CompetitorAdded(_) => 0,
                CompetitorEdited(_) => 1,
                CompetitorRemoved { .. } => 2,
                LineDefined(_) => 3,
                DecoderMapped { .. } => 4,
                DecoderUnmapped { .. } => 5,
                SessionCreated { .. } => 6,
                SettingsChanged { .. } => 7,
                SessionStarted { .. } => 8,
                Chequered { .. } => 9,
                SessionEnded { .. } => 10,
                RidersStaged { .. } => 11,
                Decided { .. } => 12,
                Undone { .. } => 13,
                StatusSet { .. } => 14,
                SeriesCreated { .. } => 15,
            };
            (index, e)
        })
        .collect()
}

const PINNED: [&str; 16] = [
    "00000302313202416c0350726f02564302009db0b1010108464c2d3934383930",
    "00010302313202416c0350726f02564302009db0b1010108464c2d3934383930",
    "000203",
    "0003010366696e0102a0c21e80897a",
    "0004070101",
    "000507",
    "000609024d3103000001900380897a0003874e884e8b4e0080aaea550a0a",
    "00070902808c8d9e02000080dac4090003874e884e8b4e0080aaea550a0a026a6f017201027031",
    "0008090105",
    "00090906",
    "000a0907",
    "000b09010103",
    "000c09026a6f01720102703102deb41c298080f9c0c1c4820304",
    "000d090c026a6f017201027031",
    "000e0902026a6f017201027031",
    "000f020342313002010201010104020101",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_race_event_keeps_its_bytes() {
    let samples = samples();
    let indices: Vec<usize> = samples.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indices,
        (0..PINNED.len()).collect::<Vec<_>>(),
        "one sample per variant, in order"
    );
    let mut changed = Vec::new();
    for ((index, event), pinned) in samples.into_iter().zip(PINNED) {
        let bytes = postcard::to_allocvec(&RaceRecord::V1(event.clone())).unwrap();
        assert_eq!(
            &bytes[..2],
            [0, index as u8],
            "envelope V1, then the variant's index"
        );
        if hex(&bytes) != pinned {
            changed.push(format!("variant {index}: now {:?}", hex(&bytes)));
        }
        let back: RaceRecord = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, RaceRecord::V1(event));
    }
    assert!(
        changed.is_empty(),
        "stored bytes changed:\n{}",
        changed.join("\n")
    );
}

/// A passing as the node hands it over: pinned too, since a snapshot of the engine stores them.
#[test]
fn a_passing_keeps_its_bytes() {
    let p = Passing {
        decoder_id: DecoderId(7),
        transponder: Some(9992),
        tran_code: Some("FL-94890".into()),
        passing_number: 3,
        rtc_time_us: 1,
    };
    assert_eq!(
        hex(&postcard::to_allocvec(&p).unwrap()),
        "0701884e0108464c2d39343839300301"
    );
}
