//! The module's allocator: large blocks straight from the kernel, the rest from Envoy's.
//!
//! A dynamic module's `malloc` is Envoy's tcmalloc, which keeps what is freed for reuse
//! unless Envoy is told to give it back (`memory_allocator_manager`). Loading a large key
//! set takes a few large, short-lived blocks (what was read of the set, before it is
//! written in place), about as large as the set itself; kept by tcmalloc after the load,
//! they would double what the set costs the process (README "Native build (Envoy dynamic
//! module)", BENCHMARKS.md). Blocks of [`LARGE`] bytes or more are mapped and unmapped
//! here instead, so their pages go back to the system the moment they are freed.
//! Whether a block is large follows from its size alone, which Rust passes to every
//! call on it: no bookkeeping is needed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;

/// The smallest block mapped on its own: well above anything a request allocates.
const LARGE: usize = 256 * 1024;
const PAGE: usize = 4096;

pub struct LargeAlloc;

fn is_large(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

fn mapped_len(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

// SAFETY: large blocks are page-aligned mappings of at least their size (and any
// alignment up to a page), unmapped or remapped only with the size they were made with;
// every other block is the system allocator's, handled by it alone. A block moves between
// the two only in `realloc`, by a copy.
unsafe impl GlobalAlloc for LargeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_large(layout) {
            // SAFETY: the caller's contract, handed on.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping, asked for no address; the kernel checks
        // the length.
        let block = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len(layout.size()),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if block == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            block.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_large(layout) {
            // SAFETY: the caller's contract, handed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // A fresh anonymous mapping reads as zeros: writing them would only make every
        // page resident.
        // SAFETY: the caller's contract, handed on.
        unsafe { self.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !is_large(layout) {
            // SAFETY: the caller's contract: `ptr` came from `alloc` with `layout`.
            return unsafe { System.dealloc(ptr, layout) };
        }
        // SAFETY: `ptr` is a mapping `alloc` made for this same size.
        let _ = unsafe { libc::munmap(ptr.cast::<c_void>(), mapped_len(layout.size())) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract (a nonzero `new_size` that fits the alignment).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(layout), is_large(new_layout)) {
            // SAFETY: the caller's contract, handed on.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) => {
                // SAFETY: `ptr` is a mapping of the old size; the kernel moves it if it
                // must, keeping its contents.
                let block = unsafe {
                    libc::mremap(
                        ptr.cast::<c_void>(),
                        mapped_len(layout.size()),
                        mapped_len(new_size),
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if block == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    block.cast()
                }
            }
            _ => {
                // Across the threshold: a new block of the other kind, and a copy.
                // SAFETY: `new_layout` is nonzero-sized (the caller's contract).
                let block = unsafe { self.alloc(new_layout) };
                if !block.is_null() {
                    // SAFETY: both blocks hold at least the smaller size and are distinct;
                    // the old one is freed once, with its own layout.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, block, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                block
            }
        }
    }
}
