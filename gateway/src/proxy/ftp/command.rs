//! FTP commands and replies the gateway acts on (RFC 959, 2428): data
//! addresses in PORT/EPRT and 227/229, and reply framing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// `h1,h2,h3,h4,p1,p2` → address (PORT argument, 227 text).
pub fn parse_hostport(s: &str) -> Option<SocketAddr> {
    let n: Vec<u8> = s.split(',').map(|p| p.trim().parse::<u8>()).collect::<Result<_, _>>().ok()?;
    if n.len() != 6 {
        return None;
    }
    let ip = Ipv4Addr::new(n[0], n[1], n[2], n[3]);
    Some(SocketAddr::new(IpAddr::V4(ip), u16::from(n[4]) << 8 | u16::from(n[5])))
}

/// The `h1,…,p2` form of an IPv4 address.
pub fn format_hostport(a: SocketAddr) -> Option<String> {
    let IpAddr::V4(ip) = a.ip() else { return None };
    let o = ip.octets();
    Some(format!("{},{},{},{},{},{}", o[0], o[1], o[2], o[3], a.port() >> 8, a.port() & 0xff))
}

/// The address in a 227 reply: `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).`
pub fn parse_227(line: &str) -> Option<SocketAddr> {
    let open = line.find('(')?;
    let close = line[open..].find(')')? + open;
    parse_hostport(&line[open + 1..close])
}

/// The port in a 229 reply: `229 Entering Extended Passive Mode (|||6446|)`.
pub fn parse_229(line: &str) -> Option<u16> {
    let open = line.find('(')?;
    let inner = &line[open + 1..];
    let d = inner.chars().next()?;
    let parts: Vec<&str> = inner.split(d).collect();
    // (<d><d><d><port><d>)
    parts.get(3)?.parse().ok()
}

/// EPRT argument `|1|132.235.1.2|6275|` or `|2|::1|5282|`.
pub fn parse_eprt(arg: &str) -> Option<SocketAddr> {
    let d = arg.chars().next()?;
    let parts: Vec<&str> = arg.split(d).collect();
    let ip: IpAddr = parts.get(2)?.parse().ok()?;
    let port: u16 = parts.get(3)?.parse().ok()?;
    match (parts.get(1)?, ip) {
        (&"1", IpAddr::V4(_)) | (&"2", IpAddr::V6(_)) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// EPRT argument for `a`.
pub fn format_eprt(a: SocketAddr) -> String {
    let fam = if a.is_ipv4() { 1 } else { 2 };
    format!("|{fam}|{}|{}|", a.ip(), a.port())
}

/// The name a server chose for STOU, from its preliminary reply
/// (RFC 1123 §4.1.2.9: `125 FILE: pppp` or `150 FILE: pppp`).
pub fn parse_stou_name(line: &str) -> Option<&str> {
    let at = line.to_ascii_uppercase().find("FILE:")?;
    let name = line[at + 5..].trim();
    (!name.is_empty()).then_some(name)
}

/// Splits `VERB args` into an upper-case verb and the rest.
pub fn split_command(line: &str) -> (String, &str) {
    let line = line.trim_end_matches(['\r', '\n']);
    match line.split_once(' ') {
        Some((v, a)) => (v.to_ascii_uppercase(), a),
        None => (line.to_ascii_uppercase(), ""),
    }
}

/// The reply code of a line that ends a reply (`ddd ` or exactly `ddd`),
/// or `None` for a continuation line.
pub fn final_code(line: &str, first_code: Option<u16>) -> Option<u16> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code: u16 = line[..3].parse().ok()?;
    if first_code.is_some_and(|c| c != code) {
        return None;
    }
    match b.get(3) {
        None | Some(b' ') | Some(b'\r') => Some(code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = parse_227("227 Entering Passive Mode (198,19,0,2,195,80).").unwrap();
        assert_eq!(a, "198.19.0.2:50000".parse().unwrap());
        assert_eq!(format_hostport(a).unwrap(), "198,19,0,2,195,80");
        assert_eq!(parse_229("229 Entering Extended Passive Mode (|||6446|)"), Some(6446));
        assert_eq!(parse_eprt("|1|132.235.1.2|6275|"), Some("132.235.1.2:6275".parse().unwrap()));
        assert_eq!(parse_eprt("|2|fd00:18::2|5282|"), Some("[fd00:18::2]:5282".parse().unwrap()));
        assert_eq!(parse_eprt("|1|::1|5282|"), None);
        assert_eq!(format_eprt("[fd00:19::1]:7000".parse().unwrap()), "|2|fd00:19::1|7000|");
        assert!(parse_hostport("1,2,3,4,5").is_none());
        assert!(parse_hostport("1,2,3,4,5,256").is_none());
        assert_eq!(parse_stou_name("150 FILE: stou-1.bin"), Some("stou-1.bin"));
        assert_eq!(parse_stou_name("125 File: a b"), Some("a b"));
        assert_eq!(parse_stou_name("150 Ok to send data."), None);
    }

    #[test]
    fn reply_framing() {
        assert_eq!(final_code("226 Transfer complete.", None), Some(226));
        assert_eq!(final_code("211-Features:", None), None);
        assert_eq!(final_code(" MDTM", Some(211)), None);
        assert_eq!(final_code("211 End", Some(211)), Some(211));
        assert_eq!(final_code("200 x", Some(211)), None);
        assert_eq!(split_command("retr a file.txt\r\n"), ("RETR".into(), "a file.txt"));
    }
}
