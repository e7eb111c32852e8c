//! Issue 11 item 16: the CPU forward allocates the `[nh, T, T]` attention probabilities only
//! when the capture plan keeps them (or a fault is planted on them); otherwise attention runs
//! fused, one row of T probabilities at a time. A global allocator here records the largest
//! single allocation of a forward, so the test counts memory rather than timing anything.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use falsifier::backend::cpu::CpuBackend;
use falsifier::backend::{Backend, ForwardRequest};
use falsifier::trace::CapturePlan;
use falsifier::trace::stage::{Key, Stage};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are recorded.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

#[test]
fn attention_probabilities_are_allocated_only_when_planned() {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
    let mut cpu = CpuBackend::open(&model).unwrap();
    // the fixture's whole context: 4 heads x 256 x 256 f32 = 1 MiB of probabilities per layer
    let t = cpu.config().context_length;
    let probs_bytes = cpu.config().n_heads * t * t * 4;
    let tokens: Vec<u32> = (0..t as u32).map(|i| i * 7 % 260).collect();
    let mut forward = |stages: &str| {
        let plan = CapturePlan::parse(stages, None).unwrap();
        LARGEST.store(0, Ordering::Relaxed);
        let trace = cpu.forward(&ForwardRequest::new(&tokens, &plan)).unwrap();
        (trace, LARGEST.load(Ordering::Relaxed))
    };
    let (fused, largest) = forward("attn_ctx,logits");
    assert!(
        largest < probs_bytes,
        "an untraced attention allocated {largest} bytes at once (probabilities: {probs_bytes})"
    );
    let (kept, largest) = forward("attn_probs,attn_ctx,logits");
    assert!(largest >= probs_bytes, "{largest} < {probs_bytes}");
    // the fused path gives the same context and logits, bit for bit
    for key in [Key::layer(2, Stage::AttnCtx), Key::model(Stage::Logits)] {
        assert_eq!(fused.get(&key), kept.get(&key), "{key}");
    }
}
