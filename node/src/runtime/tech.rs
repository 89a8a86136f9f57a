//! The technician's actions from the display's tech page, handed to the parts of the runtime that
//! can take them: an input (reconnect, resend) or the uplink (retry now).
//!
//! ```text
//!  display (HTTP worker) ──try_send──> TechRequest channel (display::TECH_COMMANDS_MAX)
//!      ──> this task ──try_send──> the input's InputCommand channel (INPUT_COMMANDS_MAX)
//!                   └──notify───> the uplink's retry handle
//!      <── the answer, at once, on the request's oneshot
//! ```
//!
//! Every hand-over is a `try_send` on a bounded channel: nothing here waits on a decoder or on
//! central, so the display's answer comes in milliseconds, and a busy input is said to be busy.
//! Auto-probed inputs take no commands yet: they have no channel, and say so.

use std::collections::HashMap;
use std::sync::Arc;

use display::{RESEND_SPAN_PASSINGS, TechAction, TechRefusal, TechRequest};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::input::InputCommand;
use super::status::Shared;

/// What the runtime can act on.
pub struct Targets {
    /// Each configured input's commands; `None` for one found by probing.
    pub inputs: HashMap<String, Option<mpsc::Sender<InputCommand>>>,
    /// The uplink's retry handle, when an uplink is configured.
    pub uplink: Option<Arc<Notify>>,
    pub status: Shared,
}

/// Takes the technician's actions until `cancel` or the display is gone.
pub async fn run(
    mut requests: mpsc::Receiver<TechRequest>,
    targets: Targets,
    cancel: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            () = cancel.cancelled() => return,
            request = requests.recv() => match request {
                Some(r) => r,
                None => return,
            },
        };
        let answer = targets.take(&request.action);
        // The display gave up waiting: the action is taken or not all the same.
        let _ = request.reply.send(answer);
    }
}

impl Targets {
    fn input(&self, name: &str) -> Result<&mpsc::Sender<InputCommand>, TechRefusal> {
        match self.inputs.get(name) {
            None => Err(TechRefusal::UnknownInput(name.to_owned())),
            Some(None) => Err(TechRefusal::Unavailable(format!(
                "input {name:?} is found by probing and takes no commands; restart the node to probe again"
            ))),
            Some(Some(tx)) => Ok(tx),
        }
    }

    fn send(&self, name: &str, command: InputCommand) -> Result<(), TechRefusal> {
        self.input(name)?.try_send(command).map_err(|_| {
            TechRefusal::Unavailable(format!(
                "input {name:?} has commands waiting or has stopped; try again"
            ))
        })
    }

    /// Takes one action; what was done, or why not.
    pub fn take(&self, action: &TechAction) -> Result<String, TechRefusal> {
        match action {
            TechAction::Reconnect { input } => {
                self.send(input, InputCommand::Reconnect)?;
                Ok(format!("reconnecting {input}"))
            }
            TechAction::Resend { input, from } => {
                self.input(input)?;
                // Only the state is read: no copy of the whole status, nor its store figures.
                let state = self
                    .status
                    .update(|s| {
                        s.decoders
                            .iter()
                            .find(|i| i.name == *input)
                            .map(|i| i.state.clone())
                    })
                    .unwrap_or_default();
                if state != "connected" {
                    return Err(TechRefusal::Unavailable(format!(
                        "input {input:?} is not connected ({state}); reconnect it first"
                    )));
                }
                let until = from.saturating_add(RESEND_SPAN_PASSINGS - 1);
                self.send(input, InputCommand::Resend { from: *from, until })?;
                Ok(format!(
                    "asked {input} to resend passings {from} to {until}"
                ))
            }
            TechAction::UplinkRetry => {
                let Some(uplink) = &self.uplink else {
                    return Err(TechRefusal::Unavailable(
                        "no uplink is configured on this node".into(),
                    ));
                };
                // A permit, so a drain between tries skips its next wait instead of missing it.
                uplink.notify_one();
                Ok("the uplink tries central now".into())
            }
        }
    }
}
