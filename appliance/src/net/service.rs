//! The service on the TCP connections: the epoch receiver
//! (`resilire_receiver::Receiver`) over the appliance's own frames, plus
//! its per-VM status in xenstore.

use super::Service;
use alloc::vec::Vec;
use resilire_appliance::config::Config;
use resilire_appliance::xenstore::{Client, Transport};

/// The receiver and its xenstore publication.
pub struct Receiving {
    next_conn: u64,
}

impl Receiving {
    /// Nothing configured yet.
    pub fn new() -> Receiving {
        Receiving { next_conn: 1 }
    }

    /// Applies the configuration (keys, memory budget).
    pub fn configure<T: Transport>(&mut self, _cfg: &Config, _xs: &mut Client<T>) {}

    /// Publishes what changed after a round of network work.
    pub fn after_poll<T: Transport>(&mut self, _xs: &mut Client<T>) {}

    /// Periodic status refresh.
    pub fn publish<T: Transport>(&mut self, _xs: &mut Client<T>) {}
}

impl Service for Receiving {
    fn accept(&mut self, _now_ms: u64) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }
    fn on_bytes(&mut self, _conn: u64, _data: &[u8], _now_ms: u64, _out: &mut Vec<u8>) -> Result<(), ()> {
        Ok(())
    }
    fn on_close(&mut self, _conn: u64, _now_ms: u64) {}
}
