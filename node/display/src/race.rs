//! The display's only way to the race engine: the [`RaceModels`] trait. The node's race projection
//! ([`results::Results`]: the engine folded from the spool, with snapshots, commands appended through
//! the spool) implements it here; anything else that can answer the same questions can stand in.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

/// Why a command was not recorded: the engine refused it, the stream moved on, or the spool did not
/// store it. The projection's own type, so the display answers exactly what it was told.
pub use results::CommandError;

/// What the display needs of the race engine.
pub trait RaceModels: Send + Sync + 'static {
    /// Every session, in id order.
    fn sessions(&self) -> Vec<race::SessionSummary>;
    fn leaderboard(&self, session: race::SessionId) -> Result<race::Leaderboard, race::Error>;
    fn moto_board(&self, session: race::SessionId) -> Result<race::MotoBoard, race::Error>;
    /// The board of the BMX series `session` is a moto of; `None` if it is in none.
    fn series_board_of(
        &self,
        session: race::SessionId,
    ) -> Option<Result<race::SeriesBoard, race::Error>>;
    /// The roster, in competitor id order.
    fn roster(&self) -> Vec<race::Competitor>;
    /// The newest raw passings for the announcer, newest first, at most `max`.
    fn feed(&self, max: usize) -> Vec<race::FeedItem>;
    /// The version of a stream, for the expected_version of the next command.
    fn version(&self, stream: race::Stream) -> u64;
    /// Records a command: resolves once the event is durable in the spool AND applied to the read
    /// models. A stale expected_version gives `Err(CommandError::Race(race::Error::Stale{..}))`.
    fn execute(
        &self,
        command: race::Command,
        user: String,
    ) -> Pin<Box<dyn Future<Output = Result<race::Recorded, CommandError>> + Send>>;
    /// Ticks (with the spool seq folded up to) whenever a read model may have changed.
    fn changed(&self) -> watch::Receiver<u64>;
}

impl RaceModels for results::Results {
    fn sessions(&self) -> Vec<race::SessionSummary> {
        results::Results::sessions(self)
    }
    fn leaderboard(&self, session: race::SessionId) -> Result<race::Leaderboard, race::Error> {
        results::Results::leaderboard(self, session)
    }
    fn moto_board(&self, session: race::SessionId) -> Result<race::MotoBoard, race::Error> {
        results::Results::moto_board(self, session)
    }
    fn series_board_of(
        &self,
        session: race::SessionId,
    ) -> Option<Result<race::SeriesBoard, race::Error>> {
        results::Results::series_board_of(self, session)
    }
    fn roster(&self) -> Vec<race::Competitor> {
        results::Results::roster(self)
    }
    fn feed(&self, max: usize) -> Vec<race::FeedItem> {
        results::Results::feed(self, max)
    }
    fn version(&self, stream: race::Stream) -> u64 {
        results::Results::version(self, stream)
    }
    fn execute(
        &self,
        command: race::Command,
        user: String,
    ) -> Pin<Box<dyn Future<Output = Result<race::Recorded, CommandError>> + Send>> {
        results::Results::execute(self, command, user)
    }
    fn changed(&self) -> watch::Receiver<u64> {
        results::Results::changed(self)
    }
}
