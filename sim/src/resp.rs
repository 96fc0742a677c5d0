//! RESP2, as much as the `redis` crate speaks to us: requests are arrays of bulk strings
//! (inline commands too, for `redis-cli`-style probes); replies are the five RESP2 types.
//! An incomplete frame is a value (`Ok(None)`), not an error.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    /// The null array (`*-1`): an `EXEC` whose watched keys changed.
    NilArray,
    Array(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Status("OK".into())
    }
    pub fn bulk(s: impl AsRef<[u8]>) -> Self {
        Reply::Bulk(s.as_ref().to_vec())
    }
    pub fn err(s: impl Into<String>) -> Self {
        Reply::Error(s.into())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Status(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Reply::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
            Reply::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            Reply::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.encode(out);
                }
            }
        }
    }
}

/// Largest request accepted (a bulk string or a whole inline line).
pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most arguments in one request.
pub const REQUEST_ARGS_MAX: usize = 1024;

fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rel = buf[from..].windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[from..from + rel], from + rel + 2))
}

fn num(b: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or_else(|| "ERR Protocol error: invalid length".to_string())
}

/// Parses one request from the front of `buf`: `Ok(Some((args, consumed)))`, `Ok(None)` when
/// more bytes are needed, `Err` for a protocol error (the connection is then closed).
pub fn parse_request(buf: &[u8]) -> Result<Option<(Vec<Vec<u8>>, usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        let Some((l, next)) = line(buf, 0) else {
            return if buf.len() > REQUEST_BYTES_MAX { Err("ERR Protocol error: too big inline request".into()) } else { Ok(None) };
        };
        let args = l.split(|b| *b == b' ').filter(|a| !a.is_empty()).map(|a| a.to_vec()).collect();
        return Ok(Some((args, next)));
    }
    let Some((l, mut pos)) = line(buf, 0) else { return Ok(None) };
    let n = num(&l[1..])?;
    if n < 0 || n as usize > REQUEST_ARGS_MAX {
        return Err("ERR Protocol error: invalid multibulk length".into());
    }
    let mut args = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let Some((l, p)) = line(buf, pos) else { return Ok(None) };
        if l.first() != Some(&b'$') {
            return Err("ERR Protocol error: expected '$'".into());
        }
        let len = num(&l[1..])?;
        if len < 0 || len as usize > REQUEST_BYTES_MAX {
            return Err("ERR Protocol error: invalid bulk length".into());
        }
        let len = len as usize;
        if buf.len() < p + len + 2 {
            return Ok(None);
        }
        if &buf[p + len..p + len + 2] != b"\r\n" {
            return Err("ERR Protocol error: bulk not terminated".into());
        }
        args.push(buf[p..p + len].to_vec());
        pos = p + len + 2;
    }
    Ok(Some((args, pos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whole_partial_and_bad_requests() {
        let req = b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n";
        assert_eq!(parse_request(req).unwrap(), Some((vec![b"ECHO".to_vec(), b"hi".to_vec()], req.len())));
        for cut in 0..req.len() {
            assert_eq!(parse_request(&req[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse_request(b"PING\r\n").unwrap(), Some((vec![b"PING".to_vec()], 6)));
        assert!(parse_request(b"*1\r\n+x\r\n").is_err());
        assert!(parse_request(b"*x\r\n").is_err());
        assert!(parse_request(b"*1\r\n$2\r\nabcd").is_err());
    }

    #[test]
    fn encodes_every_reply_type() {
        let mut out = Vec::new();
        Reply::Array(vec![Reply::ok(), Reply::err("ERR x"), Reply::Int(-3), Reply::bulk("ab"), Reply::Nil]).encode(&mut out);
        assert_eq!(out, b"*5\r\n+OK\r\n-ERR x\r\n:-3\r\n$2\r\nab\r\n$-1\r\n");
    }
}
