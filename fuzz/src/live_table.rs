//! Fuzzes `LiveTable` single-threaded against a `HashMap` model: arbitrary
//! bytes become a capacity and a sequence of insert, update, remove, get and
//! for_each calls, and every result must be what the model predicts.

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use ferroprof_alloc::live::{LiveRecord, LiveTable};

/// A table capacity and the calls to make.
#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Table capacity, taken modulo 16, plus 1.
    capacity: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(Rec),
    /// `which` picks a live slot (modulo their number, in slot order).
    Update {
        which: u16,
        rec: Rec,
    },
    Remove {
        which: u16,
    },
    Get {
        which: u16,
    },
    ForEach,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Rec {
    addr: u64,
    size: u64,
    stack: u32,
    weight_bytes: u64,
    weight_objects: u64,
}

impl From<Rec> for LiveRecord {
    fn from(r: Rec) -> LiveRecord {
        LiveRecord {
            addr: r.addr,
            size: r.size,
            stack: r.stack,
            weight_bytes: r.weight_bytes,
            weight_objects: r.weight_objects,
        }
    }
}

fn key(r: &LiveRecord) -> (u64, u64, u32, u64, u64) {
    (r.addr, r.size, r.stack, r.weight_bytes, r.weight_objects)
}

/// The live slot that `which` designates, if any is live.
fn pick(model: &HashMap<u32, LiveRecord>, which: u16) -> Option<u32> {
    let mut slots: Vec<u32> = model.keys().copied().collect();
    slots.sort_unstable();
    (!slots.is_empty()).then(|| slots[usize::from(which) % slots.len()])
}

fn check_for_each(table: &LiveTable, model: &HashMap<u32, LiveRecord>) {
    let mut seen = Vec::new();
    table.for_each(|r| seen.push(r));
    let mut expected: Vec<LiveRecord> = model.values().copied().collect();
    seen.sort_unstable_by_key(key);
    expected.sort_unstable_by_key(key);
    assert_eq!(seen, expected, "for_each differs from the model");
}

/// The target: `data` as an [`Input`], run against the model.
pub fn run(data: &[u8]) {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(input);
    }
}

fn check(input: Input) {
    let capacity = u32::from(input.capacity % 16) + 1;
    let table = LiveTable::new(capacity).expect("mapping a small table");
    assert_eq!(table.capacity(), capacity);
    let mut model: HashMap<u32, LiveRecord> = HashMap::new();

    for op in input.ops {
        match op {
            Op::Insert(rec) => match table.insert(rec.into()) {
                Some(slot) => {
                    assert!(slot < capacity, "slot {slot} out of range");
                    assert!(model.len() < capacity as usize, "insert into a full table");
                    let old = model.insert(slot, rec.into());
                    assert_eq!(old, None, "slot {slot} handed out while live");
                }
                None => assert_eq!(model.len(), capacity as usize, "insert failed, not full"),
            },
            Op::Update { which, rec } => {
                if let Some(slot) = pick(&model, which) {
                    table.update(slot, rec.into());
                    model.insert(slot, rec.into());
                }
            }
            Op::Remove { which } => {
                if let Some(slot) = pick(&model, which) {
                    let expected = model.remove(&slot);
                    assert_eq!(Some(table.remove(slot)), expected, "remove({slot})");
                }
            }
            Op::Get { which } => {
                if let Some(slot) = pick(&model, which) {
                    assert_eq!(table.get(slot), model[&slot], "get({slot})");
                }
            }
            Op::ForEach => check_for_each(&table, &model),
        }
        assert_eq!(table.len() as usize, model.len(), "len");
    }
    check_for_each(&table, &model);

    // Nothing was lost: free everything, then the table fills exactly.
    for slot in model.keys() {
        table.remove(*slot);
    }
    assert!(table.is_empty());
    let filled = (0..capacity)
        .filter_map(|i| {
            table.insert(LiveRecord {
                addr: u64::from(i),
                ..LiveRecord::default()
            })
        })
        .collect::<std::collections::HashSet<u32>>();
    assert_eq!(
        filled.len() as u32,
        capacity,
        "a slot was lost or duplicated"
    );
    assert_eq!(table.insert(LiveRecord::default()), None, "table over-full");
}
