//! FTP command and reply parsing (`gateway::proxy::ftp::command`) on
//! arbitrary text: PORT/227 host-port lists, 229 and EPRT, STOU names,
//! command splitting and reply framing. Round trips: an address parsed from
//! a PORT or EPRT argument, formatted again, parses to the same address.

#![no_main]

use gateway::proxy::ftp::command::{
    final_code, format_eprt, format_hostport, parse_227, parse_229, parse_eprt, parse_hostport, parse_stou_name,
    split_command,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The control connection is read as lines of bytes; the session takes
    // them as text (lossily, as a client may send anything).
    let line = String::from_utf8_lossy(data);
    let line = line.as_ref();

    let (verb, args) = split_command(line);
    assert_eq!(verb, verb.to_ascii_uppercase());
    assert!(!verb.contains(' '));
    assert!(line.len() >= verb.len() + args.len());

    for text in [line, args] {
        if let Some(a) = parse_hostport(text) {
            assert!(a.is_ipv4());
            let s = format_hostport(a).expect("an IPv4 address formats");
            assert_eq!(parse_hostport(&s), Some(a), "{s:?}");
            assert_eq!(s.split(',').count(), 6);
        }
        if let Some(a) = parse_227(text) {
            let s = format!("227 Entering Passive Mode ({}).", format_hostport(a).expect("IPv4"));
            assert_eq!(parse_227(&s), Some(a));
        }
        if let Some(port) = parse_229(text) {
            assert_eq!(parse_229(&format!("229 Entering Extended Passive Mode (|||{port}|)")), Some(port));
        }
        if let Some(a) = parse_eprt(text) {
            let s = format_eprt(a);
            assert_eq!(parse_eprt(&s), Some(a), "{s:?}");
        }
        if let Some(name) = parse_stou_name(text) {
            assert!(!name.is_empty());
            assert_eq!(name, name.trim());
        }
    }

    for l in line.split('\n') {
        let first = final_code(l, None);
        if let Some(code) = first {
            assert!(code <= 999);
            assert_eq!(final_code(l, Some(code)), Some(code));
            assert_eq!(final_code(l, Some(code.wrapping_add(1))), None);
        }
        let _ = final_code(l, Some(211));
    }
});
