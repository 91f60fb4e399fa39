//! Symbolization: instruction addresses to functions, files, lines and
//! mappings, off the hot path, with a bounded cache.
//!
//! The samplers record raw addresses; this module turns them into what a
//! pprof `Location` needs, once per address for the life of the process:
//!
//! - **Modules** come from `dl_iterate_phdr`: path, load bias, executable
//!   segments (a pprof `Mapping` each: start, limit, file offset) and the
//!   GNU build id read from the module's `PT_NOTE` in memory, so a backend
//!   can re-symbolize from the addresses. The list is re-read when an address
//!   falls outside every known module (a `dlopen` since the last read).
//! - **Names** come from the module's DWARF through `addr2line` when it has
//!   line tables (function, file, line and the chain of inlined calls,
//!   innermost first), and from its symbol table otherwise (a release build
//!   without debug info still names every non-inlined function). Names are
//!   demangled (Rust legacy and v0, C++).
//! - **The cache** maps an address to its result across periods. It holds
//!   at most `capacity` addresses: at the end of a batch
//!   ([`Symbolizer::end_batch`]) the addresses not used in that batch are
//!   evicted first. Function and file names are interned, so an address
//!   costs a few pointers. The DWARF readers (`addr2line` contexts, which
//!   grow as they parse) are dropped at the end of every batch, and within
//!   a batch after every [`REOPEN_AFTER`] lookups in one module, so their
//!   memory is what that many lookups parse, not the whole debug info of a
//!   large binary; callers that resolve many new addresses should do so in
//!   address order so each compilation unit is parsed about once.
//!
//! Callers pass the address to look up: for a return address (every frame
//! but the leaf of a CPU sample) that is the return address minus one, so it
//! lands inside the call instruction and names the call's line.

use std::collections::HashSet;
use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::Arc;

use addr2line::Loader;

use super::MappingInfo;

use super::fasthash::IntMap;

/// How many addresses the cache keeps by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 1 << 16;

/// A module's DWARF reader is dropped and reopened after this many
/// lookups, bounding what it holds parsed.
pub const REOPEN_AFTER: u32 = 1024;

/// One line of a symbolized address's inline chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolFrame {
    /// The demangled function name.
    pub function: Arc<str>,
    /// The linker's (mangled) name, or `""`.
    pub system_name: Arc<str>,
    /// The source file, or `""` without debug info.
    pub file: Arc<str>,
    /// The line, or 0 without debug info.
    pub line: u32,
}

/// What an address symbolizes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// The executable segment holding the address, if any.
    pub mapping: Option<Arc<MappingSegment>>,
    /// The inline chain, innermost first; the last frame is the function
    /// that really contains the address. Empty when nothing names it.
    pub frames: Box<[SymbolFrame]>,
}

/// An executable segment of a loaded module: a pprof `Mapping`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MappingSegment {
    /// First address of the segment (page aligned).
    pub start: u64,
    /// End of the segment (exclusive, page aligned).
    pub limit: u64,
    /// File offset mapped at `start`.
    pub file_offset: u64,
    /// The module's path.
    pub path: Arc<str>,
    /// The GNU build id in lowercase hex, or `""`.
    pub build_id: Arc<str>,
    /// The module has DWARF line tables (files, lines, inline chains).
    pub has_lines: bool,
}

impl MappingSegment {
    /// This segment as a pprof mapping for [`ProfileBuilder::mapping`](super::ProfileBuilder::mapping).
    pub fn mapping_info(&self) -> MappingInfo<'_> {
        MappingInfo {
            memory_start: self.start,
            memory_limit: self.limit,
            file_offset: self.file_offset,
            filename: &self.path,
            build_id: &self.build_id,
            has_functions: true,
            has_lines: self.has_lines,
            has_inline_frames: self.has_lines,
        }
    }
}

/// Counters of the symbolizer's work, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to read the modules.
    pub misses: u64,
    /// Addresses evicted to keep the cache within capacity.
    pub evictions: u64,
    /// Addresses in the cache now.
    pub cached: usize,
    /// Times the module list was read.
    pub module_scans: u64,
    /// Modules whose file could not be opened or parsed (their addresses
    /// keep their mapping but have no names).
    pub unreadable_modules: u64,
}

struct Entry {
    symbol: Symbol,
    used: u64,
}

/// Resolves addresses; see the module docs.
pub struct Symbolizer {
    modules: Vec<Module>,
    cache: IntMap<u64, Entry>,
    names: HashSet<Arc<str>>,
    capacity: usize,
    batch: u64,
    scanned_in_batch: bool,
    stats: SymbolizerStats,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("modules", &self.modules.len())
            .field("capacity", &self.capacity)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_CAPACITY)
    }
}

impl Symbolizer {
    /// A symbolizer whose cache keeps at most `capacity` addresses between
    /// batches.
    pub fn new(capacity: usize) -> Self {
        Symbolizer {
            modules: Vec::new(),
            cache: IntMap::default(),
            names: HashSet::new(),
            capacity: capacity.max(1),
            batch: 1,
            scanned_in_batch: false,
            stats: SymbolizerStats::default(),
        }
    }

    /// What `address` symbolizes to.
    pub fn resolve(&mut self, address: u64) -> &Symbol {
        let batch = self.batch;
        if self.cache.contains_key(&address) {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
            let symbol = self.lookup(address);
            self.cache.insert(address, Entry { symbol, used: 0 });
        }
        let entry = self.cache.get_mut(&address).expect("inserted above");
        entry.used = batch;
        &entry.symbol
    }

    /// The main executable's first executable segment: declared first in a
    /// profile, it is the mapping pprof names the profile after.
    pub fn main_executable(&mut self) -> Option<Arc<MappingSegment>> {
        if self.modules.is_empty() && !self.scanned_in_batch {
            self.rescan();
        }
        self.modules.first()?.segments.first().cloned()
    }

    /// Ends a batch (one profile): evicts what is over capacity, least
    /// recently used batches first, and drops the DWARF readers.
    pub fn end_batch(&mut self) {
        if self.cache.len() > self.capacity {
            let batch = self.batch;
            let before = self.cache.len();
            self.cache.retain(|_, e| e.used == batch);
            if self.cache.len() > self.capacity {
                // One batch used more addresses than the capacity: keep an
                // arbitrary `capacity` of them.
                let excess = self.cache.len() - self.capacity;
                let doomed: Vec<u64> = self.cache.keys().take(excess).copied().collect();
                for a in doomed {
                    self.cache.remove(&a);
                }
            }
            self.stats.evictions += (before - self.cache.len()) as u64;
            // Names only the evicted addresses used go too.
            self.names.retain(|n| Arc::strong_count(n) > 1);
        }
        for m in &mut self.modules {
            m.close();
        }
        self.batch += 1;
        self.scanned_in_batch = false;
    }

    /// The counters.
    pub fn stats(&self) -> SymbolizerStats {
        SymbolizerStats {
            cached: self.cache.len(),
            ..self.stats
        }
    }

    fn lookup(&mut self, address: u64) -> Symbol {
        let index = match self.module_of(address) {
            Some(i) => i,
            None if !self.scanned_in_batch => {
                self.rescan();
                match self.module_of(address) {
                    Some(i) => i,
                    None => return unknown(),
                }
            }
            None => return unknown(),
        };
        let names = &mut self.names;
        let stats = &mut self.stats;
        let module = &mut self.modules[index];
        let probe = address.wrapping_sub(module.bias);
        // Open the module first: that is when its segments learn whether
        // it has line tables.
        let frames = match module.dwarf(stats) {
            Some(loader) => symbolize(loader, probe, names),
            None => Vec::new(),
        };
        module.lookups += 1;
        if module.lookups >= REOPEN_AFTER {
            module.close();
        }
        let Some(mapping) = module.segment_of(address) else {
            return unknown();
        };
        Symbol {
            mapping: Some(mapping),
            frames: frames.into_boxed_slice(),
        }
    }

    fn module_of(&self, address: u64) -> Option<usize> {
        self.modules.iter().position(|m| {
            m.segments
                .iter()
                .any(|s| (s.start..s.limit).contains(&address))
        })
    }

    fn rescan(&mut self) {
        self.stats.module_scans += 1;
        self.scanned_in_batch = true;
        let mut fresh = loaded_modules();
        // Keep what is known about modules still loaded at the same place.
        for m in &mut fresh {
            if let Some(old) = self
                .modules
                .iter_mut()
                .find(|o| o.bias == m.bias && o.path == m.path)
            {
                m.dwarf = std::mem::replace(&mut old.dwarf, Dwarf::NotLoaded);
                m.lookups = old.lookups;
                m.segments = std::mem::take(&mut old.segments);
            }
        }
        self.modules = fresh;
    }
}

fn unknown() -> Symbol {
    Symbol {
        mapping: None,
        frames: Box::new([]),
    }
}

fn intern(names: &mut HashSet<Arc<str>>, s: &str) -> Arc<str> {
    if let Some(n) = names.get(s) {
        return n.clone();
    }
    let n: Arc<str> = Arc::from(s);
    names.insert(n.clone());
    n
}

/// The inline chain at `probe` from DWARF, completed from the symbol table.
fn symbolize(loader: &Loader, probe: u64, names: &mut HashSet<Arc<str>>) -> Vec<SymbolFrame> {
    let mut frames = Vec::new();
    if let Ok(mut iter) = loader.find_frames(probe) {
        while let Ok(Some(frame)) = iter.next() {
            let (function, system_name) = match &frame.function {
                Some(f) => (
                    f.demangle().map(|s| intern(names, &s)).ok(),
                    f.raw_name().map(|s| intern(names, &s)).ok(),
                ),
                None => (None, None),
            };
            let (file, line) = frame.location.map_or((None, 0), |l| {
                (l.file.map(|f| intern(names, f)), l.line.unwrap_or(0))
            });
            frames.push(PartialFrame {
                function,
                system_name,
                file,
                line,
            });
        }
    }
    let empty = intern(names, "");
    // The outermost frame is the function that contains the address; when
    // DWARF does not name it (no debug info for it, or none at all), the
    // symbol table does.
    if frames.last().is_none_or(|f| f.function.is_none()) {
        if let Some(raw) = loader.find_symbol(probe) {
            let demangled = addr2line::demangle_auto(raw.into(), None);
            let function = Some(intern(names, &demangled));
            let system_name = Some(intern(names, raw));
            match frames.last_mut() {
                Some(last) => {
                    last.function = function;
                    last.system_name = system_name;
                }
                None => frames.push(PartialFrame {
                    function,
                    system_name,
                    file: None,
                    line: 0,
                }),
            }
        }
    }
    frames
        .into_iter()
        .filter_map(|f| {
            Some(SymbolFrame {
                function: f.function?,
                system_name: f.system_name.unwrap_or_else(|| empty.clone()),
                file: f.file.unwrap_or_else(|| empty.clone()),
                line: f.line,
            })
        })
        .collect()
}

struct PartialFrame {
    function: Option<Arc<str>>,
    system_name: Option<Arc<str>>,
    file: Option<Arc<str>>,
    line: u32,
}

enum Dwarf {
    NotLoaded,
    Loaded(Box<Loader>),
    Unreadable,
}

struct Module {
    path: Arc<str>,
    /// Where to open the file (differs from `path` for the main executable,
    /// opened through `/proc/self/exe` so a replaced binary still reads).
    open: PathBuf,
    bias: u64,
    segments: Vec<Arc<MappingSegment>>,
    dwarf: Dwarf,
    /// Lookups since `dwarf` was opened.
    lookups: u32,
}

impl Module {
    /// Drops the DWARF reader, if open (a module that could not be read
    /// stays unreadable).
    fn close(&mut self) {
        if let Dwarf::Loaded(_) = self.dwarf {
            self.dwarf = Dwarf::NotLoaded;
        }
        self.lookups = 0;
    }

    fn segment_of(&self, address: u64) -> Option<Arc<MappingSegment>> {
        self.segments
            .iter()
            .find(|s| (s.start..s.limit).contains(&address))
            .cloned()
    }

    fn dwarf(&mut self, stats: &mut SymbolizerStats) -> Option<&Loader> {
        if let Dwarf::NotLoaded = self.dwarf {
            self.dwarf = match Loader::new(&self.open) {
                Ok(loader) => {
                    let has_lines = loader.get_section_range(b".debug_line").is_some();
                    for s in &mut self.segments {
                        if s.has_lines != has_lines {
                            Arc::make_mut(s).has_lines = has_lines;
                        }
                    }
                    Dwarf::Loaded(Box::new(loader))
                }
                Err(_) => {
                    stats.unreadable_modules += 1;
                    Dwarf::Unreadable
                }
            };
        }
        match &self.dwarf {
            Dwarf::Loaded(loader) => Some(loader),
            _ => None,
        }
    }
}

/// The modules loaded now, from `dl_iterate_phdr`.
fn loaded_modules() -> Vec<Module> {
    let mut raw: Vec<RawModule> = Vec::new();
    // SAFETY: the callback only reads the `dl_phdr_info` it is given, for the
    // duration of the call, and `data` is the `Vec` above, exclusively ours.
    unsafe {
        libc::dl_iterate_phdr(
            Some(collect_module),
            (&mut raw as *mut Vec<RawModule>).cast(),
        );
    }
    let exe = std::env::current_exe().ok();
    let page = page_size();
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, m)| {
            // The first module is the main executable, named "" by the loader.
            let (path, open) = if i == 0 || m.name.is_empty() {
                if i != 0 {
                    return None;
                }
                let path = exe.as_ref()?.to_string_lossy().into_owned();
                (path, PathBuf::from("/proc/self/exe"))
            } else {
                (m.name.clone(), PathBuf::from(&m.name))
            };
            let path: Arc<str> = Arc::from(path);
            let build_id: Arc<str> = Arc::from(m.build_id.as_str());
            let segments = m
                .exec
                .iter()
                .map(|&(vaddr, memsz, offset)| {
                    let start = m.bias.wrapping_add(vaddr) & !(page - 1);
                    let end = m.bias.wrapping_add(vaddr).wrapping_add(memsz);
                    Arc::new(MappingSegment {
                        start,
                        limit: end.div_ceil(page) * page,
                        file_offset: offset & !(page - 1),
                        path: path.clone(),
                        build_id: build_id.clone(),
                        has_lines: false,
                    })
                })
                .collect();
            Some(Module {
                path,
                open,
                bias: m.bias,
                segments,
                dwarf: Dwarf::NotLoaded,
                lookups: 0,
            })
        })
        .collect()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as u64
    } else {
        4096
    }
}

struct RawModule {
    name: String,
    bias: u64,
    /// Executable `PT_LOAD` segments: vaddr, memsz, file offset.
    exec: Vec<(u64, u64, u64)>,
    build_id: String,
}

/// `dl_iterate_phdr` callback: copies one module's description out.
///
/// # Safety
///
/// `info` is valid for the call (the loader's contract) and `data` points to
/// a `Vec<RawModule>` (ours, see `loaded_modules`).
unsafe extern "C" fn collect_module(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: see the function's contract.
    let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<RawModule>>()) };
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: the loader gives a NUL-terminated name that lives as long
        // as the module, which is loaded for this call.
        unsafe { CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
        &[]
    } else {
        // SAFETY: the loader gives `dlpi_phnum` headers at `dlpi_phdr`.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
    };
    let bias = info.dlpi_addr;
    let mut module = RawModule {
        name,
        bias,
        exec: Vec::new(),
        build_id: String::new(),
    };
    for ph in phdrs {
        if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
            module.exec.push((ph.p_vaddr, ph.p_memsz, ph.p_offset));
        }
        if ph.p_type == libc::PT_NOTE && module.build_id.is_empty() {
            let start = bias.wrapping_add(ph.p_vaddr) as *const u8;
            // SAFETY: a PT_NOTE segment is mapped (inside a PT_LOAD) for as
            // long as its module is loaded, which it is during this call.
            let notes = unsafe { std::slice::from_raw_parts(start, ph.p_memsz as usize) };
            if let Some(id) = gnu_build_id(notes) {
                module.build_id = id;
            }
        }
    }
    if !module.exec.is_empty() {
        out.push(module);
    }
    0
}

/// The `NT_GNU_BUILD_ID` note in a `PT_NOTE` segment, as lowercase hex.
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let desc_at = 12usize.checked_add(align4(namesz)?)?;
        let next = desc_at.checked_add(align4(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = notes.get(next..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_recognizable_name() -> u64 {
        // The address of a call inside this function.
        let mut ip = 0u64;
        backtrace::trace(|frame| {
            ip = frame.ip() as u64;
            false
        });
        std::hint::black_box(ip)
    }

    #[test]
    fn names_a_function_of_this_binary() {
        let here = a_function_with_a_recognizable_name as *const () as u64;
        let mut s = Symbolizer::new(16);
        let sym = s.resolve(here + 1).clone();
        let mapping = sym.mapping.as_ref().expect("inside the executable");
        assert!(mapping.start <= here && here < mapping.limit);
        assert_eq!(
            &*mapping.path,
            std::env::current_exe().unwrap().to_str().unwrap()
        );
        assert!(!mapping.build_id.is_empty(), "rustc passes --build-id");
        let outer = sym.frames.last().expect("named");
        assert!(
            outer
                .function
                .ends_with("a_function_with_a_recognizable_name"),
            "{sym:?}"
        );
        assert_eq!(s.stats().misses, 1);
        s.resolve(here + 1);
        assert_eq!(s.stats().hits, 1);
    }

    #[test]
    fn names_a_function_of_libc() {
        let malloc = libc::malloc as *const () as u64;
        let mut s = Symbolizer::new(16);
        let sym = s.resolve(malloc).clone();
        let mapping = sym.mapping.as_ref().expect("inside libc");
        assert!(mapping.path.contains("libc"), "{mapping:?}");
        assert!(
            sym.frames.iter().any(|f| f.function.contains("malloc")),
            "{sym:?}"
        );
    }

    #[test]
    fn unknown_addresses_have_no_mapping() {
        let mut s = Symbolizer::new(16);
        let sym = s.resolve(8).clone();
        assert_eq!(sym, unknown());
    }

    #[test]
    fn the_cache_stays_within_capacity() {
        let base = a_function_with_a_recognizable_name as *const () as u64;
        let mut s = Symbolizer::new(10);
        for batch in 0..5 {
            for i in 0..25 {
                s.resolve(base + batch * 100 + i);
            }
            s.end_batch();
            assert!(s.stats().cached <= 10, "{:?}", s.stats());
        }
        assert_eq!(s.stats().evictions, 5 * 25 - 10);
        // Names of evicted addresses are let go as well.
        assert!(s.names.len() < 20, "{}", s.names.len());
    }

    #[test]
    fn build_ids_are_read_from_notes() {
        let mut note = Vec::new();
        // An unrelated note first, then the build id.
        for (name, kind, desc) in [
            (&b"XYZ\0"[..], 1u32, &[9u8, 9, 9][..]),
            (b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef]),
        ] {
            note.extend((name.len() as u32).to_ne_bytes());
            note.extend((desc.len() as u32).to_ne_bytes());
            note.extend(kind.to_ne_bytes());
            note.extend(name);
            note.extend(desc);
            while note.len() % 4 != 0 {
                note.push(0);
            }
        }
        assert_eq!(gnu_build_id(&note).as_deref(), Some("deadbeef"));
        assert_eq!(gnu_build_id(&note[..20]), None, "truncated");
        assert_eq!(gnu_build_id(&[]), None);
    }
}
