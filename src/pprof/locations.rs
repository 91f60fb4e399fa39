//! Symbolized addresses as locations of one profile being built.
//!
//! The heap and CPU profiles both turn addresses into pprof `Location`s the
//! same way: symbolize, declare the address's mapping once, declare each
//! function of its inline chain once, add the location. [`Locations`] does
//! that for one [`ProfileBuilder`], declaring the main executable's mapping
//! first (pprof names a profile after its first mapping).

use std::sync::Arc;

use super::fasthash::IntMap;
use super::{ProfileBuilder, Symbol, Symbolizer};

/// Mapping and function ids already declared in one profile.
#[derive(Default)]
pub(crate) struct Locations {
    /// Mapping start -> mapping id.
    mappings: IntMap<u64, u64>,
    /// The symbolizer's interned names (pointers, stable while it holds
    /// them, which is at least until its `end_batch`) -> function id. Saves
    /// hashing the same strings again for every address of a function.
    functions: IntMap<(usize, usize, usize), u64>,
}

impl Locations {
    /// Starts a profile's locations, with the main executable's mapping
    /// declared first.
    pub(crate) fn new(b: &mut ProfileBuilder, symbolizer: &mut Symbolizer) -> Self {
        let mut locations = Locations::default();
        if let Some(main) = symbolizer.main_executable() {
            let id = b.mapping(&main.mapping_info());
            locations.mappings.insert(main.start, id);
        }
        locations
    }

    /// The location id of `address` (the address to look up: a return
    /// address minus one), and what it symbolized to.
    pub(crate) fn resolve<'s>(
        &mut self,
        b: &mut ProfileBuilder,
        symbolizer: &'s mut Symbolizer,
        address: u64,
    ) -> (u64, &'s Symbol) {
        let symbol = symbolizer.resolve(address);
        let mapping_id = match &symbol.mapping {
            Some(m) => *self
                .mappings
                .entry(m.start)
                .or_insert_with(|| b.mapping(&m.mapping_info())),
            None => 0,
        };
        let lines: Vec<(u64, i64)> = symbol
            .frames
            .iter()
            .map(|f| {
                let key = (ptr(&f.function), ptr(&f.system_name), ptr(&f.file));
                let id = *self
                    .functions
                    .entry(key)
                    .or_insert_with(|| b.function(&f.function, &f.system_name, &f.file));
                (id, i64::from(f.line))
            })
            .collect();
        (
            b.location_with_functions(mapping_id, address, lines),
            symbol,
        )
    }
}

fn ptr(s: &Arc<str>) -> usize {
    Arc::as_ptr(s).cast::<u8>() as usize
}
