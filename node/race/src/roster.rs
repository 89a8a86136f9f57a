//! The roster: who races, and which transponders are theirs; and its CSV import.
//!
//! The CSV has a header row naming its columns, in any order: `number` and `name` are required,
//! `class`, `club` and `transponders` optional; other columns are an error, so a misspelt header is
//! not silently ignored. Transponders are separated by spaces or `;`; digits are a transponder
//! number, anything else a ProChip code. Fields may be quoted (`"Smith, J"`, `""` for a quote).
//! A row whose number is already in the roster edits that competitor (a column the file lacks keeps
//! its value); an unchanged row yields nothing.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::event::{Competitor, RaceEvent};
use crate::ids::{CompetitorId, Transponder};
use crate::{CSV_LINE_BYTES_MAX, TEXT_BYTES_MAX, TRANSPONDERS_PER_COMPETITOR_MAX};

/// The roster as folded from its events.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    competitors: BTreeMap<CompetitorId, Competitor>,
    by_transponder: BTreeMap<Transponder, CompetitorId>,
    by_number: BTreeMap<String, CompetitorId>,
}

impl Roster {
    pub fn get(&self, id: CompetitorId) -> Option<&Competitor> {
        self.competitors.get(&id)
    }

    pub fn len(&self) -> usize {
        self.competitors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.competitors.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Competitor> {
        self.competitors.values()
    }

    /// The id a new competitor gets: one more than the highest ever seen in this roster.
    pub fn next_id(&self) -> CompetitorId {
        CompetitorId(self.competitors.keys().next_back().map_or(1, |c| c.0 + 1))
    }

    pub fn by_number(&self, number: &str) -> Option<CompetitorId> {
        self.by_number.get(number).copied()
    }

    /// Whose transponder this is: the ProChip code first, then the number.
    pub fn owner(&self, number: Option<u32>, code: Option<&str>) -> Option<CompetitorId> {
        let by_code = code.and_then(|c| {
            self.by_transponder
                .get(&Transponder::Code(c.trim().to_ascii_uppercase()))
        });
        by_code
            .or_else(|| number.and_then(|n| self.by_transponder.get(&Transponder::Number(n))))
            .copied()
    }

    /// Checks a competitor record against the roster: its fields, its number and transponders free.
    pub(crate) fn check(&self, c: &Competitor) -> Result<(), Error> {
        check_fields(c)?;
        if let Some(&by) = self.by_number.get(&c.number)
            && by != c.id
        {
            return Err(Error::NumberTaken {
                number: c.number.clone(),
                by,
            });
        }
        for t in &c.transponders {
            if let Some(&by) = self.by_transponder.get(t)
                && by != c.id
            {
                return Err(Error::TransponderTaken {
                    transponder: t.clone(),
                    by,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn put(&mut self, c: Competitor) {
        self.remove(c.id);
        self.by_number.insert(c.number.clone(), c.id);
        for t in &c.transponders {
            self.by_transponder.insert(t.clone(), c.id);
        }
        self.competitors.insert(c.id, c);
    }

    pub(crate) fn remove(&mut self, id: CompetitorId) {
        if let Some(old) = self.competitors.remove(&id) {
            self.by_number.remove(&old.number);
            for t in &old.transponders {
                self.by_transponder.remove(t);
            }
        }
    }

    /// Reads a roster CSV into the events that would bring the roster to it, and an error per bad
    /// line. Good lines are kept even when others are bad. The events are to be run as commands, one
    /// after the other, against the roster stream.
    pub fn import_csv(&self, text: &str) -> CsvImport {
        let mut import = CsvImport::default();
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        let Some((_, header)) = lines.find(|(_, l)| !l.trim().is_empty()) else {
            import.errors.push(csv_error(1, "-", "the file is empty"));
            return import;
        };
        let columns = match Columns::parse(header) {
            Ok(c) => c,
            Err(why) => {
                import.errors.push(csv_error(1, "header", &why));
                return import;
            }
        };
        let mut scratch = self.clone();
        let mut next = self.next_id();
        for (line, text) in lines.filter(|(_, l)| !l.trim().is_empty()) {
            match columns.row(line, text, &scratch, next) {
                Ok(c) => {
                    let event = match scratch.get(c.id) {
                        None => RaceEvent::CompetitorAdded(c.clone()),
                        Some(old) if *old == c => continue,
                        Some(_) => RaceEvent::CompetitorEdited(c.clone()),
                    };
                    if c.id == next {
                        next = CompetitorId(next.0 + 1);
                    }
                    scratch.put(c);
                    import.events.push(event);
                }
                Err(e) => import.errors.push(e),
            }
        }
        import
    }
}

/// What a CSV import found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CsvImport {
    /// Added or edited competitors, in file order.
    pub events: Vec<RaceEvent>,
    /// One per bad line ([`Error::Csv`]).
    pub errors: Vec<Error>,
}

fn csv_error(line: usize, column: &str, why: &str) -> Error {
    Error::Csv {
        line,
        column: column.to_string(),
        why: why.to_string(),
    }
}

fn check_fields(c: &Competitor) -> Result<(), Error> {
    let invalid = |why: String| Error::Invalid {
        what: "competitor",
        why,
    };
    if c.number.trim().is_empty() {
        return Err(invalid("the number is empty".into()));
    }
    for (field, value) in [
        ("number", &c.number),
        ("name", &c.name),
        ("class", &c.class),
        ("club", &c.club),
    ] {
        if value.len() > TEXT_BYTES_MAX {
            return Err(invalid(format!(
                "the {field} is longer than {TEXT_BYTES_MAX} bytes"
            )));
        }
    }
    let long_code = c.transponders.iter().any(|t| match t {
        Transponder::Code(code) => code.len() > crate::TRANSPONDER_CODE_BYTES_MAX,
        Transponder::Number(_) => false,
    });
    if long_code {
        return Err(invalid(format!(
            "a transponder code is longer than {} bytes",
            crate::TRANSPONDER_CODE_BYTES_MAX
        )));
    }
    if c.transponders.len() > TRANSPONDERS_PER_COMPETITOR_MAX {
        return Err(invalid(format!(
            "more than {TRANSPONDERS_PER_COMPETITOR_MAX} transponders"
        )));
    }
    Ok(())
}

const COLUMNS: [&str; 5] = ["number", "name", "class", "club", "transponders"];

/// Where each known column sits in a row.
struct Columns {
    /// Index into [`COLUMNS`] of each field of a row.
    order: Vec<usize>,
}

impl Columns {
    fn parse(header: &str) -> Result<Columns, String> {
        let fields = split_csv(header)?;
        let mut order = Vec::new();
        for f in &fields {
            let name = f.trim().to_ascii_lowercase();
            let Some(i) = COLUMNS.iter().position(|c| *c == name) else {
                return Err(format!(
                    "unknown column {name:?}; known: {}",
                    COLUMNS.join(", ")
                ));
            };
            if order.contains(&i) {
                return Err(format!("column {name:?} appears twice"));
            }
            order.push(i);
        }
        for required in [0, 1] {
            if !order.contains(&required) {
                return Err(format!("no column {:?}", COLUMNS[required]));
            }
        }
        Ok(Columns { order })
    }

    /// One data row as a competitor: new (id `next`) or the existing one with this number.
    fn row(
        &self,
        line: usize,
        text: &str,
        roster: &Roster,
        next: CompetitorId,
    ) -> Result<Competitor, Error> {
        if text.len() > CSV_LINE_BYTES_MAX {
            return Err(csv_error(
                line,
                "-",
                &format!("longer than {CSV_LINE_BYTES_MAX} bytes"),
            ));
        }
        let fields = split_csv(text).map_err(|why| csv_error(line, "-", &why))?;
        if fields.len() != self.order.len() {
            let why = format!(
                "{} fields, the header has {}",
                fields.len(),
                self.order.len()
            );
            return Err(csv_error(line, "-", &why));
        }
        let mut cells: [String; 5] = Default::default();
        for (field, &i) in fields.into_iter().zip(&self.order) {
            cells[i] = field.trim().to_string();
        }
        let [number, name, class, club, transponder_cell] = cells;
        let mut transponders = Vec::new();
        for word in transponder_cell.split([' ', ';']).filter(|w| !w.is_empty()) {
            let t = Transponder::parse(word).ok_or_else(|| {
                csv_error(
                    line,
                    "transponders",
                    &format!("{word:?} is neither a number nor a transponder code"),
                )
            })?;
            if !transponders.contains(&t) {
                transponders.push(t);
            }
        }
        let existing = roster.by_number(&number).and_then(|id| roster.get(id));
        let id = existing.map_or(next, |c| c.id);
        let mut c = Competitor {
            id,
            number,
            name,
            class,
            club,
            transponders,
        };
        // A column the file does not have leaves an existing competitor's value as it was.
        if let Some(old) = existing {
            let absent = |i: usize| !self.order.contains(&i);
            if absent(2) {
                c.class = old.class.clone();
            }
            if absent(3) {
                c.club = old.club.clone();
            }
            if absent(4) {
                c.transponders = old.transponders.clone();
            }
        }
        roster.check(&c).map_err(|e| {
            let column = match e {
                Error::TransponderTaken { .. } => "transponders",
                Error::NumberTaken { .. } => "number",
                _ => "-",
            };
            csv_error(line, column, &e.to_string())
        })?;
        Ok(c)
    }
}

/// Splits one CSV line into fields, honouring quotes.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (_, c) => field.push(c),
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_keep_commas_and_quotes() {
        assert_eq!(
            split_csv(r#"12,"Smith, ""JJ""",Pro"#).unwrap(),
            ["12", r#"Smith, "JJ""#, "Pro"]
        );
        assert!(split_csv(r#"12,"open"#).is_err());
    }
}
