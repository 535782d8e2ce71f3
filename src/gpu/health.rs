//! Error scopes and device health: every wgpu call fusedopt makes runs inside scopes that turn
//! what wgpu reports into an `Err`, and a device fusedopt created records what escapes them
//! (an uncaptured error, the loss of the device) for the next call to report.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use super::Gpu;
use crate::error::{Error, Result};

/// What a device reported outside any scope. Handlers are installed only on devices fusedopt
/// created: a borrowed device keeps the caller's own.
#[derive(Debug, Default)]
pub(super) struct Health {
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<wgpu::Error>>>,
}

impl Health {
    /// Health fed by `device`'s lost callback and uncaptured-error handler.
    pub(super) fn watching(device: &wgpu::Device) -> Self {
        let health = Self::default();
        let lost = Arc::clone(&health.lost);
        device.set_device_lost_callback(move |reason, message| {
            *lost.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(format!("{reason:?}: {message}"));
        });
        let uncaptured = Arc::clone(&health.uncaptured);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            let mut slot = uncaptured.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert(error);
        }));
        health
    }

    /// Fails if the device was lost, or with the first error that escaped every scope.
    fn check(&self) -> Result<()> {
        let lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = lost.clone() {
            return Err(Error::DeviceLost(reason));
        }
        let escaped = self
            .uncaptured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match escaped {
            Some(source) => Err(Error::Wgpu {
                context: "an earlier operation".into(),
                source,
            }),
            None => Ok(()),
        }
    }
}

impl Gpu {
    /// Runs `f`, which makes wgpu calls on this device, inside out-of-memory, validation and
    /// internal error scopes, and turns what they catch into an `Err` (dropping whatever `f`
    /// made). `context` says what was being done, for the error. A lost device, or an error
    /// that escaped every scope, fails the call before and after `f`.
    pub fn scoped<T>(&self, context: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.health.check()?;
        let value = self.capture(context, f)?;
        self.health.check()?;
        Ok(value)
    }

    /// Submits the encoder's commands. An `Err` means they were refused and nothing of them
    /// runs; anything the device reports after they went out is left to [`Gpu::wait`], so
    /// that a submission that happened is never reported as refused.
    pub fn submit(
        &self,
        context: &str,
        encoder: wgpu::CommandEncoder,
    ) -> Result<wgpu::SubmissionIndex> {
        self.health.check()?;
        self.capture(context, || self.queue.submit([encoder.finish()]))
    }

    /// `f` inside the error scopes, without the health checks: for calls whose effect (a
    /// submission, commands in an encoder) has happened once `f` ran, so that an error from
    /// elsewhere is not taken for theirs. Callers check the health before.
    pub(super) fn capture<T>(&self, context: &str, f: impl FnOnce() -> T) -> Result<T> {
        let device = &self.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let value = f();
        let internal = pollster::block_on(internal.pop());
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        if oom.is_some() || validation.is_some() || internal.is_some() {
            // A lost device makes every later call invalid: say that, not what broke.
            self.check_lost()?;
        }
        if let Some(source) = oom {
            return Err(Error::OutOfMemory {
                context: context.to_string(),
                source,
            });
        }
        if let Some(source) = validation.or(internal) {
            return Err(Error::Wgpu {
                context: context.to_string(),
                source,
            });
        }
        Ok(value)
    }

    /// Fails with [`Error::DeviceLost`] if the device was lost, polling it once so that a
    /// loss wgpu has not yet reported is seen (for the error paths, where a loss is the
    /// likeliest cause).
    pub(super) fn check_lost(&self) -> Result<()> {
        let _ = catch_unwind(AssertUnwindSafe(|| self.device.poll(wgpu::PollType::Poll)));
        let lost = self
            .health
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match lost.clone() {
            Some(reason) => Err(Error::DeviceLost(reason)),
            None => Ok(()),
        }
    }

    /// `error`, or [`Error::DeviceLost`] when the device was lost (the likelier cause).
    pub(super) fn lost_or(&self, error: Error) -> Error {
        self.check_lost().err().unwrap_or(error)
    }

    /// Fails if the device was lost or an error escaped every scope.
    pub(super) fn check_health(&self) -> Result<()> {
        self.health.check()
    }

    /// Fails unless the device has timestamp queries (for timed steps and copies).
    pub(crate) fn require_timestamps(&self) -> Result<()> {
        if self.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(());
        }
        Err(Error::InvalidSetting {
            what: "timed pass".into(),
            message: "timestamps need the TIMESTAMP_QUERY feature, which this device lacks".into(),
        })
    }

    /// Waits until `submission` has run, at most the timeout ([`Gpu::set_timeout`]); a lost
    /// device is an `Err`, not a panic. After a timeout the work still runs.
    pub fn wait(&self, submission: wgpu::SubmissionIndex) -> Result<()> {
        self.poll(wgpu::PollType::Wait {
            submission_index: Some(submission),
            timeout: Some(self.timeout),
        })
    }

    /// Submits the encoder's commands and waits for them.
    pub fn submit_and_wait(&self, context: &str, encoder: wgpu::CommandEncoder) -> Result<()> {
        let submission = self.submit(context, encoder)?;
        self.wait(submission)
    }

    /// `Device::poll`, with a panic inside wgpu (a lost device) turned into an `Err`.
    pub(super) fn poll(&self, poll_type: wgpu::PollType) -> Result<()> {
        let poll = catch_unwind(AssertUnwindSafe(|| self.device.poll(poll_type)));
        match poll {
            Ok(Ok(_)) => self.health.check(),
            Ok(Err(wgpu::PollError::Timeout)) => Err(Error::Timeout(self.timeout)),
            Ok(Err(e)) => Err(Error::DeviceLost(e.to_string())),
            Err(_) => Err(Error::DeviceLost(
                "the device panicked while polling".into(),
            )),
        }
    }
}
