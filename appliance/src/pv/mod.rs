//! The parts of the appliance that talk to Xen. Only built for the
//! `x86_64-unknown-none` target. Each module owns one Xen facility:
//!
//! - [`console`]: the PV console ring (domU) or `console_io` (dom0), `print!`.
//! - [`logger`]: a `log` backend writing to the console with levels and uptime.
//! - [`mm`]: pfn/mfn translation, page-table extension over all memory, the
//!   frame allocator, the heap, and a window for mapping foreign frames.
//! - [`events`]: shared_info, event-channel polling, notification.
//! - [`time`]: Xen system time from `vcpu_time_info`.
//! - [`gnttab`]: the grant table (v1) for granting pages to backends.
//! - [`xs_ring`]: the xenstore ring as a transport for the xenstore client.

pub mod console;
pub mod events;
pub mod gnttab;
pub mod logger;
pub mod mm;
pub mod time;
pub mod xs_ring;
