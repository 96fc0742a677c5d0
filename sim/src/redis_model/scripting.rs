//! Scripting as Redis 7 does it: the script text a client sends runs in embedded Lua 5.1,
//! cached by SHA1 (`NOSCRIPT` for an unknown one, the cache lost on restart). Inside a script,
//! `redis.call`/`redis.pcall` reach the same command implementation clients use, with Redis's
//! conversion rules between Lua values and replies and its error texts. A script is atomic (the
//! model is locked while it runs) and nothing non-deterministic is reachable from it: no `os`,
//! `io` or file loading, `math.random` is Redis's rand48 from its fixed start state, and an
//! instruction budget turns a runaway loop into an error instead of a hung simulation.

use super::commands::{self, arity_ok, lookup};
use super::keyspace::Keyspace;
use crate::resp::Reply;
use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Value as LuaValue, VmState};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Lua instructions one script may run before the model stops it (Redis would keep running it
/// and answer `BUSY` to everyone else; a simulation must end).
pub const SCRIPT_INSTRUCTIONS_MAX: u64 = 50_000_000;
const HOOK_EVERY: u32 = 10_000;

/// What a running script's callbacks reach: the keyspace (moved in for the script's duration),
/// the rand48 state, and the instruction count.
struct Ctx {
    ks: Keyspace,
    rand48: u64,
    instructions: u64,
}

/// The state of Redis's rand48 when the server starts (`x[] = {0x330E, 0xABCD, 0x1234}`).
/// Redis 7 no longer re-seeds it for every script: it runs on across scripts (and `SCRIPT
/// FLUSH`) until the process restarts, or a script calls `math.randomseed`.
const RAND48_AT_START: u64 = 0x1234_ABCD_330E;
/// The low 16 bits `redisSrand48(seed)` sets.
const RAND48_SEED_LOW: u64 = 0x330E;

fn rand48_next(state: &mut u64) -> i64 {
    *state = (state.wrapping_mul(0x5DEE_CE66D).wrapping_add(0xB)) & ((1 << 48) - 1);
    (*state >> 17) as i64
}

/// Set up once per Lua state: the `redis` library, Redis's error handler, global protection.
const PRELUDE: &str = r#"
local dbg = debug
local rcall, rcallc, rsha1, rrandom, rseed = __rcall, __rcallc, __rsha1, __rrandom, __rseed

local function push_error_buff(s)
  local code, msg
  if string.sub(s, 1, 1) == '-' then
    local sp = string.find(s, ' ', 1, true)
    if sp then code, msg = string.sub(s, 2, sp - 1), string.sub(s, sp + 1) else code, msg = 'ERR', string.sub(s, 2) end
  else
    code, msg = 'ERR', s
  end
  msg = string.gsub(string.gsub(msg, '^[\r\n]+', ''), '[\r\n]+$', '')
  return {err = code .. ' ' .. msg}
end

local redis = {}
-- A C function, as in Redis: `return redis.call(...)` keeps the script's frame (a tail call
-- to a Lua function would not), so the error handler finds the script's line.
redis.call = rcallc
redis.pcall = function(...)
  local r = rcall(...)
  return r
end
redis.error_reply = function(...)
  local e = ...
  if select('#', ...) ~= 1 or type(e) ~= 'string' then return push_error_buff('wrong number or type of arguments') end
  if string.sub(e, 1, 1) ~= '-' then e = '-' .. e end
  return push_error_buff(e)
end
redis.status_reply = function(...)
  local s = ...
  if select('#', ...) ~= 1 or type(s) ~= 'string' then return push_error_buff('wrong number or type of arguments') end
  return {ok = s}
end
redis.sha1hex = function(s) return rsha1(s) end
redis.log = function() end
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
redis.replicate_commands = function() return true end
redis.set_repl = function() end
redis.REPL_NONE, redis.REPL_AOF, redis.REPL_SLAVE, redis.REPL_REPLICA, redis.REPL_ALL = 0, 1, 2, 2, 3
rawset(_G, 'redis', redis)

math.random = function(...)
  local n = select('#', ...)
  local r = (rrandom() % 2147483647) / 2147483647
  if n == 0 then return r end
  local a, b = ...
  if n == 1 then
    local u = math.floor(a)
    if u < 1 then error("bad argument #1 to 'random' (interval is empty)", 2) end
    return math.floor(r * u) + 1
  elseif n == 2 then
    local l, u = math.floor(a), math.floor(b)
    if l > u then error("bad argument #2 to 'random' (interval is empty)", 2) end
    return math.floor(r * (u - l + 1)) + l
  end
  error('wrong number of arguments', 2)
end
math.randomseed = function(s) rseed(math.floor(s)) end

-- Redis's __redis__err__handler: every failure becomes {err=..., source=..., line=...}, the
-- place being the script's (this prelude's own helpers, like a C function, are skipped).
local function handler(err)
  local lvl = 2
  local i = dbg.getinfo(lvl, 'nSl')
  while i and (i.what == 'C' or i.source == '=prelude') do
    lvl = lvl + 1
    i = dbg.getinfo(lvl, 'nSl')
  end
  if type(err) ~= 'table' then err = {err = 'ERR ' .. tostring(err)} end
  if i then err.source = i.source; err.line = i.currentline end
  return err
end
local run = function(f) return xpcall(f, handler) end
rawset(_G, '__rcall', nil); rawset(_G, '__rcallc', nil); rawset(_G, '__rsha1', nil); rawset(_G, '__rrandom', nil); rawset(_G, '__rseed', nil)
rawset(_G, 'loadfile', nil); rawset(_G, 'dofile', nil); rawset(_G, 'print', nil); rawset(_G, 'debug', nil)

-- Redis 7.0.15 makes the globals and the library tables read-only; reading a missing global
-- is an error. Scripts run with `env` as their environment; the libraries are read-only proxies.
local function readonly() error('Attempt to modify a readonly table', 2) end
local function proxy(t) return setmetatable({}, {__index = t, __newindex = readonly, __metatable = false}) end
for _, name in ipairs({'redis', 'string', 'math', 'table'}) do rawset(_G, name, proxy(rawget(_G, name))) end
local G = _G
setmetatable(G, {
  __index = function(_, n) error("Script attempted to access nonexistent global variable '" .. tostring(n) .. "'", 2) end,
})
local env = setmetatable({}, {__index = G, __newindex = readonly, __metatable = false})
local sandbox = function(f) return setfenv(f, env) end
return run, sandbox
"#;

/// Registry key of the Rust function behind `redis.call` and `redis.pcall`.
const RCALL_KEY: &str = "orchsim.rcall";

/// `redis.call`: calls the implementation (which returns the reply and whether it is an error)
/// and raises an error reply as a Lua error whose value is the `{err=...}` table, as Redis does.
unsafe extern "C-unwind" fn redis_call(state: *mut mlua::ffi::lua_State) -> std::os::raw::c_int {
    use mlua::ffi;
    let n = ffi::lua_gettop(state);
    ffi::lua_getfield(state, ffi::LUA_REGISTRYINDEX, c"orchsim.rcall".as_ptr());
    ffi::lua_insert(state, 1);
    ffi::lua_call(state, n, 2);
    if ffi::lua_toboolean(state, -1) != 0 {
        ffi::lua_pop(state, 1);
        ffi::lua_error(state);
    }
    ffi::lua_pop(state, 1);
    1
}

/// Scripts compiled in this process, by SHA1 of their body: the Lua 5.1 bytecode (with its debug
/// information, so error lines are the same) or the compile error's message. Every simulated
/// Redis start used to parse the same few script bodies again (a tenth of a seed's Lua time);
/// loading the bytecode gives the same function without the parser. Bounded: past
/// `COMPILED_MAX` bodies, new ones are compiled without being kept.
static COMPILED: Mutex<BTreeMap<String, Compiled>> = Mutex::new(BTreeMap::new());
type Compiled = Result<Arc<[u8]>, String>;
const COMPILED_MAX: usize = 4_096;

/// The prelude's bytecode, compiled once per process.
static PRELUDE_BYTECODE: OnceLock<Vec<u8>> = OnceLock::new();

/// Compiles a script body as Redis 7 does (a text chunk named `@user_script`; a body that is
/// bytecode is refused, as Redis refuses it), or loads its cached bytecode.
fn compile(lua: &Lua, sha: &str, body: &[u8]) -> Result<Function, String> {
    let cached = COMPILED.lock().unwrap_or_else(|p| p.into_inner()).get(sha).cloned();
    if let Some(c) = cached {
        return match c {
            Ok(code) => lua.load(&code[..]).set_name("@user_script").set_mode(ChunkMode::Binary).into_function().map_err(|e| e.to_string()),
            Err(msg) => Err(msg),
        };
    }
    let compiled = lua.load(body).set_name("@user_script").set_mode(ChunkMode::Text).into_function().map_err(|e| match &e {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    });
    let mut cache = COMPILED.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() < COMPILED_MAX {
        cache.insert(sha.to_string(), compiled.as_ref().map(|f| Arc::from(f.dump(false))).map_err(String::clone));
    }
    compiled
}

pub(crate) struct Scripting {
    lua: Lua,
    runner: Function,
    /// Gives a compiled script the read-only environment.
    sandbox: Function,
    /// `math.random`'s state between scripts.
    rand48: u64,
    cache: BTreeMap<String, Function>,
}

pub(crate) fn sha1_hex(s: &[u8]) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(s);
    h.digest().to_string()
}

/// The error table `redis.call` builds from an error reply or a message (`luaPushErrorBuff`).
fn error_text(s: &str) -> String {
    let (code, msg) = match s.strip_prefix('-') {
        Some(rest) => rest.split_once(' ').unwrap_or(("ERR", rest)),
        None => ("ERR", s),
    };
    format!("{code} {}", msg.trim_matches(|c| c == '\r' || c == '\n'))
}

/// `%.17g`, as Redis formats a Lua number passed to `redis.call`.
fn number_arg(n: f64) -> String {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e17 {
        return format!("{}", n as i64);
    }
    if !n.is_finite() {
        return if n.is_nan() {
            "nan".into()
        } else if n > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let exp = n.abs().log10().floor() as i32;
    if (-5..17).contains(&exp) {
        let s = format!("{:.*}", (16 - exp).max(0) as usize, n);
        let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
        return s;
    }
    let s = format!("{:.16e}", n);
    let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
    let mant = if mant.contains('.') { mant.trim_end_matches('0').trim_end_matches('.') } else { mant };
    let e: i32 = e.parse().unwrap_or(0);
    format!("{mant}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

fn reply_to_lua(lua: &Lua, r: Reply) -> mlua::Result<LuaValue> {
    Ok(match r {
        Reply::Int(i) => LuaValue::Number(i as f64),
        Reply::Bulk(b) => LuaValue::String(lua.create_string(&b)?),
        Reply::Nil | Reply::NilArray => LuaValue::Boolean(false),
        Reply::Status(s) => {
            let t = lua.create_table()?;
            t.raw_set("ok", s)?;
            LuaValue::Table(t)
        }
        Reply::Error(e) => {
            let t = lua.create_table()?;
            t.raw_set("err", error_text(&format!("-{e}")))?;
            LuaValue::Table(t)
        }
        Reply::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.into_iter().enumerate() {
                t.raw_set(i + 1, reply_to_lua(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// Lua → reply, Redis's rules: numbers truncate to integers, `false`/`nil` are nil, `true` is
/// 1, `{err=...}`/`{ok=...}` are an error/status, any other table an array up to its first nil.
fn lua_to_reply(v: &LuaValue) -> Reply {
    match v {
        LuaValue::Nil | LuaValue::Boolean(false) => Reply::Nil,
        LuaValue::Boolean(true) => Reply::Int(1),
        LuaValue::Integer(i) => Reply::Int(*i),
        LuaValue::Number(n) => Reply::Int(*n as i64),
        LuaValue::String(s) => Reply::Bulk(s.as_bytes().to_vec()),
        LuaValue::Table(t) => {
            if let Ok(LuaValue::String(e)) = t.raw_get::<LuaValue>("err") {
                return Reply::Error(String::from_utf8_lossy(&e.as_bytes()).replace(['\r', '\n'], " "));
            }
            if let Ok(LuaValue::String(s)) = t.raw_get::<LuaValue>("ok") {
                return Reply::Status(String::from_utf8_lossy(&s.as_bytes()).replace(['\r', '\n'], " "));
            }
            let mut items = Vec::new();
            for i in 1.. {
                match t.raw_get::<LuaValue>(i) {
                    Ok(LuaValue::Nil) | Err(_) => break,
                    Ok(x) => items.push(lua_to_reply(&x)),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Nil,
    }
}

/// `redis.call`'s arguments as a command: strings as they are, numbers as `%.17g`.
fn command_args(args: MultiValue) -> Result<Vec<Vec<u8>>, &'static str> {
    if args.is_empty() {
        return Err("Please specify at least one argument for this redis lib call");
    }
    args.into_iter()
        .map(|a| match a {
            LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
            LuaValue::Integer(i) => Ok(i.to_string().into_bytes()),
            LuaValue::Number(n) => Ok(number_arg(n).into_bytes()),
            _ => Err("Lua redis lib command arguments must be strings or integers"),
        })
        .collect()
}

/// One command from inside a script: the reply, and whether it is an error `redis.call`
/// must raise.
fn script_call(ks: &mut Keyspace, args: &[Vec<u8>]) -> Result<Reply, String> {
    let Some(spec) = lookup(&args[0]) else { return Err("Unknown Redis command called from script".into()) };
    if !arity_ok(spec, args.len()) {
        return Err("Wrong number of args calling Redis command from script".into());
    }
    if spec.noscript {
        return Err("This Redis command is not allowed from script".into());
    }
    Ok(commands::call(ks, spec, args))
}

impl Scripting {
    pub fn new() -> Self {
        // SAFETY: `debug` is what makes this constructor unsafe (it can reach past Lua's memory
        // safety). Only the prelude uses it, for Redis's error handler and `redis.call`'s line
        // numbers; it removes the global before any script runs.
        let lua = unsafe { Lua::unsafe_new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::DEBUG, LuaOptions::default()) };
        let g = lua.globals();
        let rcall = lua
            .create_function(|lua, args: MultiValue| {
                let parsed = command_args(args);
                let mut ctx = lua.app_data_mut::<Ctx>().ok_or_else(|| mlua::Error::runtime("redis.call outside a script"))?;
                let (reply, failed) = match parsed {
                    Err(msg) => (Reply::Error(error_text(msg)), true),
                    Ok(args) => match script_call(&mut ctx.ks, &args) {
                        Err(msg) => (Reply::Error(error_text(&msg)), true),
                        Ok(r) => {
                            let failed = matches!(r, Reply::Error(_));
                            (r, failed)
                        }
                    },
                };
                drop(ctx);
                Ok((reply_to_lua(lua, reply)?, failed))
            })
            .expect("redis.call");
        let sha1 = lua.create_function(|_, s: mlua::LuaString| Ok(sha1_hex(&s.as_bytes()))).expect("redis.sha1hex");
        let random = lua
            .create_function(|lua, ()| {
                let mut ctx = lua.app_data_mut::<Ctx>().ok_or_else(|| mlua::Error::runtime("math.random outside a script"))?;
                Ok(rand48_next(&mut ctx.rand48) as f64)
            })
            .expect("math.random");
        let seed = lua
            .create_function(|lua, s: i64| {
                let mut ctx = lua.app_data_mut::<Ctx>().ok_or_else(|| mlua::Error::runtime("math.randomseed outside a script"))?;
                // redisSrand48(seed): X = seed << 16 | 0x330E (32-bit seed).
                ctx.rand48 = (((s as i32 as u32) as u64) << 16) | RAND48_SEED_LOW;
                Ok(())
            })
            .expect("math.randomseed");
        lua.set_named_registry_value(RCALL_KEY, rcall.clone()).expect("register redis.call's implementation");
        // SAFETY: `redis_call` only uses the Lua stack as the C API documents (see there).
        let rcallc = unsafe { lua.create_c_function(redis_call) }.expect("redis.call");
        for (name, f) in [("__rcall", rcall), ("__rcallc", rcallc), ("__rsha1", sha1), ("__rrandom", random), ("__rseed", seed)] {
            g.raw_set(name, f).expect("install a builtin");
        }
        let prelude = PRELUDE_BYTECODE.get_or_init(|| {
            lua.load(PRELUDE)
                .set_name("=prelude")
                .set_mode(ChunkMode::Text)
                .into_function()
                .expect("the scripting prelude compiles")
                .dump(false)
        });
        let (runner, sandbox): (Function, Function) =
            lua.load(&prelude[..]).set_name("=prelude").set_mode(ChunkMode::Binary).call(()).expect("the scripting prelude runs");
        lua.set_hook(HookTriggers::new().every_nth_instruction(HOOK_EVERY), |lua, _| {
            // Compiling and the prelude run outside a script: no budget there.
            let Some(mut ctx) = lua.app_data_mut::<Ctx>() else { return Ok(VmState::Continue) };
            ctx.instructions += HOOK_EVERY as u64;
            if ctx.instructions > SCRIPT_INSTRUCTIONS_MAX {
                return Err(mlua::Error::runtime(format!("script ran past the model's budget of {SCRIPT_INSTRUCTIONS_MAX} instructions")));
            }
            Ok(VmState::Continue)
        })
        .expect("the instruction hook");
        Self { lua, runner, sandbox, rand48: RAND48_AT_START, cache: BTreeMap::new() }
    }

    /// Forgets every script (`SCRIPT FLUSH`).
    pub fn flush(&mut self) {
        self.cache.clear();
    }

    /// A new server process: no scripts, and `math.random` from its start state again.
    pub fn restart(&mut self) {
        self.cache.clear();
        self.rand48 = RAND48_AT_START;
    }

    pub fn exists(&self, sha: &str) -> bool {
        self.cache.contains_key(&sha.to_ascii_lowercase())
    }

    /// Compiles `body` and caches it under its SHA1, as `SCRIPT LOAD` and `EVAL` do.
    pub fn load(&mut self, body: &[u8]) -> Result<String, Reply> {
        let sha = sha1_hex(body);
        if self.cache.contains_key(&sha) {
            return Ok(sha);
        }
        // Redis 7 compiles the body itself as a chunk named `@user_script`.
        let f = compile(&self.lua, &sha, body)
            .and_then(|f| self.sandbox.call::<Function>(f).map_err(|e| e.to_string()))
            .map_err(|msg| Reply::err(format!("ERR Error compiling script (new function): {}", msg.replace(['\r', '\n'], " "))))?;
        self.cache.insert(sha.clone(), f);
        Ok(sha)
    }

    /// Runs the cached script `sha` with `KEYS` and `ARGV` against the keyspace.
    pub fn run(&mut self, ks: &mut Keyspace, sha: &str, keys: &[Vec<u8>], argv: &[Vec<u8>]) -> Reply {
        let Some(f) = self.cache.get(sha).cloned() else { return Reply::err("NOSCRIPT No matching script. Please use EVAL.") };
        let lua = &self.lua;
        // KEYS and ARGV as fresh global arrays, built on the Lua stack (mlua's table and string
        // handles cost more than the copy itself).
        // SAFETY: only stack operations on the state `exec_raw` hands over, within its 3 free
        // slots (a table, a string, a key), leaving the stack as it was; a Lua error (out of
        // memory) unwinds past borrowed slices only.
        let set = unsafe {
            lua.exec_raw::<()>((), |state| {
                use mlua::ffi;
                for (name, items) in [(c"KEYS", keys), (c"ARGV", argv)] {
                    ffi::lua_createtable(state, items.len().try_into().unwrap_or(0), 0);
                    for (i, a) in items.iter().enumerate() {
                        ffi::lua_pushlstring(state, a.as_ptr().cast(), a.len());
                        ffi::lua_rawseti(state, -2, (i + 1) as ffi::lua_Integer);
                    }
                    ffi::lua_pushstring(state, name.as_ptr());
                    ffi::lua_insert(state, -2);
                    ffi::lua_rawset(state, ffi::LUA_GLOBALSINDEX);
                }
            })
        };
        if let Err(e) = set {
            return Reply::err(format!("ERR script arguments could not be set: {e}"));
        }
        lua.set_app_data(Ctx { ks: std::mem::take(ks), rand48: self.rand48, instructions: 0 });
        let result = self.runner.call::<MultiValue>(f);
        let ctx = lua.remove_app_data::<Ctx>().expect("the script context is still there");
        *ks = ctx.ks;
        self.rand48 = ctx.rand48;
        let mut vals = match result {
            Ok(v) => v.into_iter(),
            Err(e) => return Reply::err(format!("ERR {}", e.to_string().replace(['\r', '\n'], " "))),
        };
        let ok = matches!(vals.next(), Some(LuaValue::Boolean(true)));
        let value = vals.next().unwrap_or(LuaValue::Nil);
        if ok {
            return lua_to_reply(&value);
        }
        let LuaValue::Table(t) = &value else { return Reply::err("ERR script failed") };
        let msg = match t.raw_get::<LuaValue>("err") {
            Ok(LuaValue::String(s)) => String::from_utf8_lossy(&s.as_bytes()).into_owned(),
            _ => "ERR unknown error".into(),
        };
        let mut out = msg;
        if let (Ok(LuaValue::String(src)), Ok(line)) = (t.raw_get::<LuaValue>("source"), t.raw_get::<LuaValue>("line")) {
            let line = match line {
                LuaValue::Integer(i) => i.to_string(),
                LuaValue::Number(n) => (n as i64).to_string(),
                _ => String::new(),
            };
            if !line.is_empty() {
                out = format!("{out} script: {sha}, on {}:{line}.", String::from_utf8_lossy(&src.as_bytes()));
            }
        }
        Reply::Error(out.replace(['\r', '\n'], " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_as_redis_passes_them_to_commands() {
        assert_eq!(number_arg(3.0), "3");
        assert_eq!(number_arg(-42.0), "-42");
        assert_eq!(number_arg(1.5), "1.5");
        assert_eq!(number_arg(0.1), "0.10000000000000001");
    }

    #[test]
    fn a_script_from_the_process_cache_is_the_script_compiled_fresh() {
        // Bodies no other test uses, so the first `load` here compiles and the second process
        // (a new `Scripting`, as after a restart) loads the cached bytecode.
        let ok = b"local n = tonumber(ARGV[1]) -- cache test\nreturn {n * 2, KEYS[1]}";
        let failing = b"-- cache test\nlocal a = 1\nreturn redis.call('INCR', KEYS[1])";
        let broken = b"return ( -- cache test";
        let run = |body: &[u8]| {
            let mut s = Scripting::new();
            let mut ks = Keyspace::default();
            super::commands::call(&mut ks, lookup(b"SET").unwrap(), &[b"SET".to_vec(), b"k".to_vec(), b"x".to_vec()]);
            match s.load(body) {
                Ok(sha) => s.run(&mut ks, &sha, &[b"k".to_vec()], &[b"21".to_vec()]),
                Err(e) => e,
            }
        };
        for body in [&ok[..], &failing[..], &broken[..]] {
            let first = run(body);
            assert!(COMPILED.lock().unwrap().contains_key(&sha1_hex(body)), "{first:?} was not kept");
            assert_eq!(run(body), first);
        }
        assert_eq!(run(ok), Reply::Array(vec![Reply::Int(42), Reply::bulk("k")]));
        // The error names the script's line from the cached bytecode's debug information.
        assert!(matches!(run(failing), Reply::Error(e) if e.contains("@user_script:3.")), "{:?}", run(failing));
        assert!(matches!(run(broken), Reply::Error(e) if e.starts_with("ERR Error compiling script")));
        // A body that is bytecode is refused, as Redis refuses it: only the model loads bytecode.
        let code = COMPILED.lock().unwrap().get(&sha1_hex(ok)).cloned().unwrap().unwrap();
        assert!(matches!(Scripting::new().load(&code), Err(Reply::Error(e)) if e.contains("binary chunk")));
    }

    #[test]
    fn rand48_matches_the_reference_sequence() {
        // lrand48() after srand48(0), as glibc and Redis's rand48.c compute it.
        let mut s = RAND48_SEED_LOW;
        let first: Vec<i64> = (0..3).map(|_| rand48_next(&mut s)).collect();
        assert_eq!(first, vec![366850414, 1610402240, 206956554]);
        // What a fresh redis-server 7.0 answers to `EVAL "return math.random(1000000)" 0`.
        let mut s = RAND48_AT_START;
        let r = (rand48_next(&mut s) % 2147483647) as f64 / 2147483647.0;
        assert_eq!((r * 1_000_000.0).floor() as i64 + 1, 396465);
    }
}
