//! The roster CSV import: good lines become events, each bad line a clear error.

use race::*;

use crate::support::*;

const CSV: &str = "\
number,name,class,club,transponders
12,Ada Lovelace,Pro,Velo Club,2906141
\"7\",\"Smith, \"\"JJ\"\"\",Cruiser,,FL-94890 4242
,No Number,Pro,,1
13,Twin,Pro,,2906141
14,Bad Chip,Pro,,FL_9489!
15,Short,Pro
16,Fine,Girls 10,BMX Club,pv-38463;777
";

#[test]
fn an_import_keeps_good_lines_and_names_each_bad_one() {
    let w = World::new(0, 0);
    let import = w.engine.roster().import_csv(CSV);
    let errors: Vec<(usize, String)> = import
        .errors
        .iter()
        .map(|e| match e {
            Error::Csv { line, column, .. } => (*line, column.clone()),
            other => panic!("not a CSV error: {other:?}"),
        })
        .collect();
    assert_eq!(
        errors,
        [
            (4, "-".into()),
            (5, "transponders".into()),
            (6, "transponders".into()),
            (7, "-".into()),
        ]
    );
    assert!(
        import.errors[0].to_string().contains("number is empty"),
        "{}",
        import.errors[0]
    );
    assert!(
        import.errors[1].to_string().contains("2906141"),
        "{}",
        import.errors[1]
    );
    let added: Vec<Competitor> = import
        .events
        .iter()
        .map(|e| match e {
            RaceEvent::CompetitorAdded(c) => c.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(added.len(), 3);
    assert_eq!(added[1].name, "Smith, \"JJ\"");
    assert_eq!(added[1].id, CompetitorId(2));
    assert_eq!(
        added[1].transponders,
        [
            Transponder::Code("FL-94890".into()),
            Transponder::Number(4242)
        ]
    );
    assert_eq!(
        added[2].transponders[0],
        Transponder::Code("PV-38463".into())
    );
}

#[test]
fn imported_competitors_are_found_by_prochip_code_and_a_second_import_edits() {
    let mut w = World::new(0, 0);
    for event in w.engine.roster().import_csv(CSV).events {
        w.run(event);
    }
    assert_eq!(w.engine.roster().len(), 3);
    assert_eq!(
        w.engine.roster().owner(None, Some("fl-94890")),
        Some(CompetitorId(2))
    );
    assert_eq!(
        w.engine.roster().owner(Some(2906141), None),
        Some(CompetitorId(1))
    );
    // The same file again changes nothing; a changed class is an edit of the same competitor.
    assert!(w.engine.roster().import_csv(CSV).events.is_empty());
    let again = w
        .engine
        .roster()
        .import_csv("name,number,class\nAda Lovelace,12,Masters\n");
    let [RaceEvent::CompetitorEdited(c)] = &again.events[..] else {
        panic!("{again:?}")
    };
    assert_eq!((c.id, c.class.as_str()), (CompetitorId(1), "Masters"));
    assert_eq!(
        (c.club.as_str(), c.transponders.len()),
        ("Velo Club", 1),
        "absent columns are kept"
    );
    // Headers are checked too.
    let bad = w.engine.roster().import_csv("numbr,name\n1,x\n");
    assert!(
        matches!(&bad.errors[..], [Error::Csv { line: 1, .. }]),
        "{bad:?}"
    );
}
