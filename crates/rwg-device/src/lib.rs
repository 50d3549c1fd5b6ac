//! OS I/O for rwg on Linux: the TUN device, the UDP sockets, the configuration socket (UAPI)
//! and the daemon that ties them to the protocol core.

pub mod memory;
mod sys;
pub mod tun;
pub mod uapi;
pub mod udp;
