//! The display's only way to the race engine: the [`RaceModels`] trait (the seam with the node's race
//! projection), and [`SpoolEngine`], a plain in-memory [`race::Engine`] folded from the spool that
//! implements it until the node's own projection is plugged in.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Seq, Spool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the display needs of the race engine. The node implements it over its race projection
/// (crate `results`); tests implement it over a plain in-memory `race::Engine`.
pub trait RaceModels: Send + Sync + 'static {
    /// Every session, in id order.
    fn sessions(&self) -> Vec<race::SessionSummary>;
    fn leaderboard(&self, session: race::SessionId) -> Result<race::Leaderboard, race::Error>;
    fn moto_board(&self, session: race::SessionId) -> Result<race::MotoBoard, race::Error>;
    /// The roster, in competitor id order.
    fn roster(&self) -> Vec<race::Competitor>;
    /// The newest raw passings for the announcer, newest first, at most `max`.
    fn feed(&self, max: usize) -> Vec<race::FeedItem>;
    /// The version of a stream, for the expected_version of the next command.
    fn version(&self, stream: race::Stream) -> u64;
    /// Records a command: resolves once the event is durable in the spool AND applied to the read
    /// models. A stale expected_version gives Err(CommandError::Race(race::Error::Stale{..})).
    fn execute(
        &self,
        command: race::Command,
        user: String,
    ) -> Pin<Box<dyn Future<Output = Result<race::Recorded, CommandError>> + Send>>;
    /// Ticks (with the spool seq folded up to) whenever a read model may have changed.
    fn changed(&self) -> watch::Receiver<u64>;
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Race(#[from] race::Error),
    /// The spool refused or failed the append (disk full, I/O error): the command was not recorded.
    #[error("not stored: {0}")]
    Storage(String),
}

/// The event type [`SpoolEngine`] stores a recorded race event under (postcard [`StoredRace`]).
pub const RACE_RECORD_EVENT_TYPE: &str = "race.recorded";

/// A race event as [`SpoolEngine`] stores it: the engine's own versioned envelope, with its stream
/// version so a replay applies it in place.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRace {
    pub stream: race::Stream,
    pub version: u64,
    pub record: race::RaceRecord,
}

/// A plain in-memory race engine folded from the whole spool at start and kept up by a live
/// subscription: passings from `decoder.passing`, race events from [`RACE_RECORD_EVENT_TYPE`].
/// Nothing of its state is saved; a restart folds again. It is what `venue-node run` shows until the
/// node's race projection replaces it, and what the display's tests drive.
pub struct SpoolEngine {
    engine: Mutex<race::Engine>,
    spool: Spool,
    changed: watch::Sender<u64>,
    /// One command at a time: decide, append, apply, so two tablets cannot both pass the version check.
    commands: tokio::sync::Mutex<()>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SpoolEngine {
    /// Folds the spool from its first event, then follows it, on a thread of its own until `cancel`.
    pub fn start(spool: &Spool, cancel: CancellationToken) -> std::io::Result<Arc<SpoolEngine>> {
        let (changed, _) = watch::channel(0);
        let models = Arc::new(SpoolEngine {
            engine: Mutex::new(race::Engine::default()),
            spool: spool.clone(),
            changed,
            commands: tokio::sync::Mutex::new(()),
            thread: Mutex::new(None),
        });
        let mut subscription = spool.subscribe(spool::Filter::all(), Some(Seq::FIRST));
        let follower = models.clone();
        let thread = std::thread::Builder::new()
            .name("display-race".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "race fold: no runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    loop {
                        let next = tokio::select! {
                            () = cancel.cancelled() => return,
                            next = subscription.next() => next,
                        };
                        match next {
                            Ok(event) => follower.fold(&event),
                            Err(spool::SpoolError::Closed) => return,
                            Err(error) => {
                                tracing::error!(error = %spool::error_chain(&error), "race fold: spool read failed");
                                return;
                            }
                        }
                        // Everything already stored folds before one tick, not one tick per event.
                        while let Ok(Some(event)) = subscription.try_next() {
                            follower.fold(&event);
                        }
                        follower
                            .changed
                            .send_replace(subscription.position().0.saturating_sub(1));
                    }
                });
            })?;
        *models.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(models)
    }

    /// Waits, after `cancel`, for the fold's thread to let go of the spool.
    pub async fn stopped(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, race::Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds one stored event; anything else is not the race engine's.
    fn fold(&self, event: &RecordedEvent) {
        use spool::schema::EventPayload;
        if event.event_type == events::catalog::Passing::EVENT_TYPE {
            let Ok(p) = events::catalog::Passing::from_event(event) else {
                return;
            };
            self.engine().ingest(race::Passing {
                decoder_id: race::DecoderId(p.decoder_id.unwrap_or(0)),
                transponder: p.transponder,
                tran_code: p.tran_code,
                passing_number: p.passing_number,
                rtc_time_us: p.rtc_time_us,
            });
        } else if event.event_type == RACE_RECORD_EVENT_TYPE {
            let Ok(stored) = postcard::from_bytes::<StoredRace>(&event.payload) else {
                tracing::warn!(seq = event.seq.0, "race fold: an undecodable race record");
                return;
            };
            let mut engine = self.engine();
            // The command that stored it applied it already in this process.
            if engine.version(stored.stream) >= stored.version {
                return;
            }
            let race::RaceRecord::V1(event) = stored.record;
            let recorded = race::Recorded {
                stream: stored.stream,
                version: stored.version,
                event,
            };
            if let Err(error) = engine.apply(&recorded) {
                tracing::warn!(%error, "race fold: a stored race event does not apply");
            }
        }
    }

    async fn record(
        self: Arc<Self>,
        command: race::Command,
        user: String,
    ) -> Result<race::Recorded, CommandError> {
        let _one = self.commands.lock().await;
        let recorded = self.engine().decide(command)?;
        let stored = StoredRace {
            stream: recorded.stream,
            version: recorded.version,
            record: race::RaceRecord::V1(recorded.event.clone()),
        };
        let payload =
            postcard::to_allocvec(&stored).map_err(|e| CommandError::Storage(e.to_string()))?;
        let meta = Metadata {
            user: Some(user),
            ..Metadata::default()
        };
        let stream = spool::StreamId::new(format!("race/{}", stream_name(recorded.stream)))
            .map_err(|e| CommandError::Storage(e.to_string()))?;
        let event = NewEvent::new(RACE_RECORD_EVENT_TYPE, 1, payload, meta);
        let appended = self
            .spool
            .append(vec![AppendStream::new(
                stream,
                ExpectedVersion::Any,
                vec![event],
            )])
            .await
            .map_err(|e| CommandError::Storage(spool::error_chain(&e)))?;
        {
            // The fold may have read it back from the spool and applied it already.
            let mut engine = self.engine();
            if engine.version(recorded.stream) < recorded.version {
                engine.apply(&recorded)?;
            }
        }
        if let Some(a) = appended.first() {
            self.changed.send_modify(|seq| *seq = (*seq).max(a.seq.0));
        }
        Ok(recorded)
    }
}

/// The spool stream a race stream's events are stored under, after `race/`.
fn stream_name(stream: race::Stream) -> String {
    match stream {
        race::Stream::Roster => "roster".into(),
        race::Stream::Track => "track".into(),
        race::Stream::Session(s) => format!("session-{}", s.0),
        race::Stream::Series(s) => format!("series-{}", s.0),
    }
}

impl RaceModels for Arc<SpoolEngine> {
    fn sessions(&self) -> Vec<race::SessionSummary> {
        let engine = self.engine();
        let mut out = Vec::new();
        // Session ids are dense in practice; walk the summaries the engine has.
        let mut id = 0u32;
        let mut misses = 0u32;
        // The engine has no list accessor; ids are probed until a run of misses, bounded.
        while misses < SESSION_PROBE_MISSES_MAX && id < u32::MAX {
            match engine.session(race::SessionId(id)) {
                Some(s) => {
                    out.push(s);
                    misses = 0;
                }
                None => misses += 1,
            }
            id += 1;
        }
        out
    }
    fn leaderboard(&self, session: race::SessionId) -> Result<race::Leaderboard, race::Error> {
        self.engine().leaderboard(session)
    }
    fn moto_board(&self, session: race::SessionId) -> Result<race::MotoBoard, race::Error> {
        self.engine().moto_board(session)
    }
    fn roster(&self) -> Vec<race::Competitor> {
        self.engine().roster().iter().cloned().collect()
    }
    fn feed(&self, max: usize) -> Vec<race::FeedItem> {
        self.engine().feed(max)
    }
    fn version(&self, stream: race::Stream) -> u64 {
        self.engine().version(stream)
    }
    fn execute(
        &self,
        command: race::Command,
        user: String,
    ) -> Pin<Box<dyn Future<Output = Result<race::Recorded, CommandError>> + Send>> {
        Box::pin(self.clone().record(command, user))
    }
    fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// [`SpoolEngine`] lists sessions by probing ids (the engine keeps them in a private map): it stops
/// after this many ids in a row hold no session. Ids a venue creates by hand are small and dense.
pub const SESSION_PROBE_MISSES_MAX: u32 = 1_000;
