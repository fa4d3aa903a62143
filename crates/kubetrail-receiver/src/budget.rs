//! The in-flight byte budget: one pool of bytes shared by every request, so the memory held
//! by request bodies is bounded by configuration whatever the number of clients.
//!
//! A request charges its buffers as they grow (never from a declared `Content-Length`) and
//! gives everything back when its [`Charge`] is dropped, whatever way the request ends.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::INFLIGHT_BYTES;

/// Largest single charge (a semaphore takes at most `u32::MAX` permits at once).
const MAX_STEP: usize = u32::MAX as usize;

/// A shared pool of bytes.
#[derive(Debug, Clone)]
pub(crate) struct ByteBudget {
    pool: Arc<Semaphore>,
    total: usize,
}

impl ByteBudget {
    /// A pool of `total` bytes (clamped to what a semaphore can count).
    pub(crate) fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        ByteBudget {
            pool: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// An empty charge against this pool.
    pub(crate) fn charge(&self) -> Charge {
        Charge {
            budget: self.clone(),
            permit: None,
            bytes: 0,
        }
    }

    /// Bytes charged now over all requests.
    pub(crate) fn in_use(&self) -> usize {
        self.total - self.pool.available_permits()
    }

    fn publish_gauge(&self) {
        metrics::gauge!(INFLIGHT_BYTES).set(self.in_use() as f64);
    }
}

/// The bytes one request holds; returned to the pool on drop.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: ByteBudget,
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

/// The pool has fewer free bytes than asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exhausted;

impl Charge {
    /// Charges `n` more bytes, or fails without waiting when the pool cannot give them.
    pub(crate) fn grow(&mut self, n: usize) -> Result<(), Exhausted> {
        if n == 0 {
            return Ok(());
        }
        if n > MAX_STEP {
            return Err(Exhausted);
        }
        let more = self
            .budget
            .pool
            .clone()
            .try_acquire_many_owned(u32::try_from(n).map_err(|_| Exhausted)?)
            .map_err(|_| Exhausted)?;
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        self.bytes += n;
        self.budget.publish_gauge();
        Ok(())
    }

    /// Bytes charged by this request.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.budget.publish_gauge();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_returned_on_drop() {
        let budget = ByteBudget::new(100);
        let mut a = budget.charge();
        a.grow(60).unwrap();
        let mut b = budget.charge();
        assert_eq!(b.grow(41), Err(Exhausted));
        b.grow(40).unwrap();
        assert_eq!(budget.in_use(), 100);
        assert_eq!(a.grow(1), Err(Exhausted));
        drop(a);
        assert_eq!(budget.in_use(), 40);
        b.grow(60).unwrap();
        assert_eq!(b.bytes(), 100);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }
}
