//! SIP, for now only what a shared MSRP/SIP port needs (a TCP listener may
//! carry both, as Kamailio's does; the first line decides): recognising a
//! SIP message and refusing it clearly until the SIP edge serves it.

pub mod reject;
