//! The agent's global allocator: the C library's `malloc`, except that blocks of
//! [`MAP_THRESHOLD`] bytes or more get anonymous mappings of their own.
//!
//! Why: every Workload API connection carries fixed HTTP/2 buffers (h2 allocates 16 KiB to
//! write, 8 KiB to read and 4 KiB for Huffman-decoded header strings per connection) of which
//! an idle stream touches a few hundred bytes, and the HPACK buffer none at all (the
//! `:authority` adapter hands h2 no Huffman-coded strings). Carved out of the `malloc` heap,
//! those buffers reuse memory that earlier allocations have touched, so all their pages are
//! resident: about 20 KiB per connection that holds nothing. In a mapping of their own, only
//! the pages written become resident, and freeing them returns them to the kernel at once.
//!
//! Whether a block is mapped is decided from its [`Layout`], which Rust passes again when the
//! block is freed, so no per-block bookkeeping is needed. When the kernel refuses a mapping
//! (out of memory, or the process reached `vm.max_map_count`), the block comes from `malloc`
//! instead and its address is recorded in a small fixed table, so freeing it goes back to
//! `malloc`; only when that table is full too does the allocation fail.
//!
//! The price is a system call to map and one to unmap each large block: on the Workload API's
//! path three per connection, as the codec's message buffers stay below the threshold (the
//! agent's CPU per call on a new connection did not measurably change).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Blocks at least this large are mapped on their own.
pub const MAP_THRESHOLD: usize = 4 * 1024;

/// How many blocks that should have been mapped, but came from `malloc` because the kernel
/// refused a mapping, can be live at once.
const FALLBACK_SLOTS: usize = 1024;

/// Page size assumed when the system cannot say.
const DEFAULT_PAGE: usize = 4096;

/// `malloc` for small blocks, a mapping of their own for large ones; see the module
/// documentation.
#[derive(Debug, Default)]
pub struct MapLargeBlocks;

/// Addresses of live fallback blocks; null marks a free slot.
static FALLBACKS: [AtomicPtr<u8>; FALLBACK_SLOTS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; FALLBACK_SLOTS];

/// Live fallback blocks; while it is zero, freeing a large block needs no table lookup.
static FALLBACKS_LIVE: AtomicUsize = AtomicUsize::new(0);

/// The page size, read once.
static PAGE: AtomicUsize = AtomicUsize::new(0);

fn page_size() -> usize {
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions; it only reads a system value.
    let reported = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(reported)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(DEFAULT_PAGE);
    PAGE.store(page, Ordering::Relaxed);
    page
}

/// Whether blocks of `layout` are mapped rather than taken from `malloc`.
fn is_large(layout: Layout) -> bool {
    layout.size() >= MAP_THRESHOLD && layout.align() <= page_size()
}

/// `size` rounded up to whole pages; `None` on overflow.
fn mapping_len(size: usize) -> Option<usize> {
    let page = page_size();
    size.checked_add(page - 1).map(|s| s & !(page - 1))
}

/// Maps `size` bytes of zeroed memory; null when the kernel refuses.
fn map(size: usize) -> *mut u8 {
    let Some(len) = mapping_len(size) else {
        return ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping at an address the kernel picks touches no existing
    // memory; the result is checked against MAP_FAILED.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        addr.cast()
    }
}

/// Records a fallback block; false when the table is full.
fn remember_fallback(block: *mut u8) -> bool {
    for slot in &FALLBACKS {
        if slot
            .compare_exchange(ptr::null_mut(), block, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            FALLBACKS_LIVE.fetch_add(1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

/// Forgets `block` if it is a fallback block; tells whether it was.
fn forget_fallback(block: *mut u8) -> bool {
    if FALLBACKS_LIVE.load(Ordering::Acquire) == 0 {
        return false;
    }
    for slot in &FALLBACKS {
        if slot
            .compare_exchange(block, ptr::null_mut(), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            FALLBACKS_LIVE.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

impl MapLargeBlocks {
    /// A large block: mapped, or from `malloc` (recorded) when the kernel refuses.
    ///
    /// # Safety
    ///
    /// `layout` has a non-zero size and satisfies [`is_large`].
    unsafe fn alloc_large(layout: Layout, zeroed: bool) -> *mut u8 {
        let block = map(layout.size());
        if !block.is_null() {
            return block;
        }
        // SAFETY: the caller guarantees a non-zero size, as `System` requires.
        let block = unsafe {
            if zeroed {
                System.alloc_zeroed(layout)
            } else {
                System.alloc(layout)
            }
        };
        if block.is_null() || remember_fallback(block) {
            return block;
        }
        // SAFETY: `block` was just allocated by `System` with `layout` and is not shared.
        unsafe { System.dealloc(block, layout) };
        ptr::null_mut()
    }

    /// Frees a large block made by [`MapLargeBlocks::alloc_large`].
    ///
    /// # Safety
    ///
    /// `block` came from `alloc_large` with this `layout` and is not used afterwards.
    unsafe fn dealloc_large(block: *mut u8, layout: Layout) {
        if forget_fallback(block) {
            // SAFETY: fallback blocks come from `System` with this layout.
            unsafe { System.dealloc(block, layout) };
            return;
        }
        if let Some(len) = mapping_len(layout.size()) {
            // SAFETY: the block is a whole mapping of `len` bytes made by `map`, and the caller
            // no longer uses it. munmap cannot fail for a valid mapping.
            unsafe { libc::munmap(block.cast(), len) };
        }
    }
}

// SAFETY: every block is either a fresh anonymous mapping, page aligned and at least as large
// as its layout, or a `System` block; `dealloc` and `realloc` route each block back to the
// allocator that made it, deciding by its layout (which Rust passes unchanged) and, for large
// layouts, by the fallback table.
unsafe impl GlobalAlloc for MapLargeBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            // SAFETY: large layouts are non-zero in size.
            unsafe { Self::alloc_large(layout, false) }
        } else {
            // SAFETY: GlobalAlloc's contract (non-zero size) passes through.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            // SAFETY: as in `alloc`; fresh mappings are zeroed by the kernel.
            unsafe { Self::alloc_large(layout, true) }
        } else {
            // SAFETY: as in `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if is_large(layout) {
            // SAFETY: a large layout means `alloc_large` made the block.
            unsafe { Self::dealloc_large(block, layout) }
        } else {
            // SAFETY: a small layout means `System` made the block.
            unsafe { System.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract guarantees `new_size` rounded up to `layout.align()`
        // does not overflow, which makes this a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_large(layout) && !is_large(new_layout) {
            // SAFETY: both sides are `System` blocks; the contract passes through.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        if is_large(layout)
            && is_large(new_layout)
            && mapping_len(layout.size()) == mapping_len(new_size)
            && FALLBACKS_LIVE.load(Ordering::Acquire) == 0
        {
            // Same pages either way: the mapping already holds the new size.
            return block;
        }

        // Moving between kinds (or mappings): allocate, copy, free.
        // SAFETY: `new_layout` is valid (above) and non-zero in size by the contract.
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        moved
    }
}

/// Tunes the C library's allocator for a small, long-running daemon; call first thing in
/// `main`, before other threads start.
///
/// glibc gives threads their own heaps ("arenas"), up to eight per CPU, and memory freed in one
/// cannot serve another. The agent issues SVIDs on blocking threads and serves on the runtime's
/// workers, so each kept a heap with its own free pages; one shared heap kept the agent with
/// 1000 streams 1.3 MiB smaller. Its lock is rarely contended: most small blocks are recycled
/// through glibc's per-thread caches, which need no lock.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation policy and has no memory-safety
        // preconditions.
        let accepted = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if accepted != 1 {
            tracing::debug!("glibc refused to limit its arenas");
        }
    }
}

/// Returns the free pages inside the C library's heaps to the kernel.
///
/// glibc gives memory back only from the top of a heap; pages freed in the middle, as after
/// issuing a thousand SVIDs (whose temporaries outnumber what is kept), stay resident until this
/// is called. It walks the free lists, well under a millisecond for the agent's heap, so call
/// it after bursts of work, not per request.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free memory to the kernel; it has no preconditions.
        unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    fn resident_pages(block: *mut u8, size: usize) -> usize {
        let page = page_size();
        let pages = size.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: `block` is page aligned and spans `pages` pages; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(block.cast(), pages * page, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore failed: {}", std::io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    #[test]
    fn large_blocks_hold_only_the_pages_written() {
        let alloc = MapLargeBlocks;
        let size = 16 * 1024;
        // SAFETY: non-zero layout; the block is written within bounds and freed once.
        unsafe {
            let block = alloc.alloc(layout(size));
            assert!(!block.is_null());
            assert_eq!(
                block as usize % page_size(),
                0,
                "mapped blocks are page aligned"
            );
            assert_eq!(resident_pages(block, size), 0);
            block.write_bytes(7, 100);
            assert_eq!(resident_pages(block, size), 1);
            alloc.dealloc(block, layout(size));
        }
    }

    #[test]
    fn small_blocks_come_from_malloc_and_zeroed_blocks_are_zero() {
        let alloc = MapLargeBlocks;
        // SAFETY: non-zero layouts; reads and writes stay within each block; each freed once.
        unsafe {
            let small = alloc.alloc(layout(100));
            assert!(!small.is_null());
            small.write_bytes(1, 100);
            alloc.dealloc(small, layout(100));

            let big = alloc.alloc_zeroed(layout(MAP_THRESHOLD));
            assert!(std::slice::from_raw_parts(big, MAP_THRESHOLD)
                .iter()
                .all(|b| *b == 0));
            alloc.dealloc(big, layout(MAP_THRESHOLD));
        }
    }

    #[test]
    fn realloc_keeps_contents_across_every_kind_of_move() {
        let alloc = MapLargeBlocks;
        let sizes = [
            64,
            MAP_THRESHOLD - 1,
            MAP_THRESHOLD,
            MAP_THRESHOLD + 1,
            3 * MAP_THRESHOLD,
            100,
        ];
        // SAFETY: every block is written and read within its current size and freed once with
        // the layout it has at that point.
        unsafe {
            let mut size = 16;
            let mut block = alloc.alloc(layout(size));
            for (i, b) in std::slice::from_raw_parts_mut(block, size)
                .iter_mut()
                .enumerate()
            {
                *b = i as u8;
            }
            for new_size in sizes {
                block = alloc.realloc(block, layout(size), new_size);
                assert!(!block.is_null());
                let kept = std::slice::from_raw_parts(block, 16);
                assert!(kept.iter().enumerate().all(|(i, b)| *b == i as u8));
                block.add(new_size - 1).write(0xAA);
                size = new_size;
            }
            alloc.dealloc(block, layout(size));
        }
    }

    #[test]
    fn fallback_blocks_are_recorded_and_forgotten() {
        // The kernel refusing a mapping cannot be forced in a test; check the table's part.
        let blocks: Vec<Box<u8>> = (0..3).map(Box::new).collect();
        let addrs: Vec<*mut u8> = blocks
            .iter()
            .map(|b| std::ptr::from_ref::<u8>(b).cast_mut())
            .collect();
        for a in &addrs {
            assert!(remember_fallback(*a));
        }
        assert!(FALLBACKS_LIVE.load(Ordering::Acquire) >= 3);
        for a in &addrs {
            assert!(forget_fallback(*a));
            assert!(!forget_fallback(*a), "a block is forgotten once");
        }
    }

    #[test]
    fn alignments_beyond_a_page_are_left_to_malloc() {
        let big_align = Layout::from_size_align(MAP_THRESHOLD, page_size() * 2).unwrap();
        assert!(!is_large(big_align));
        assert!(is_large(layout(MAP_THRESHOLD)));
        assert!(!is_large(layout(MAP_THRESHOLD - 1)));
    }
}
