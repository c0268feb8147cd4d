//! Resilire checkpoint store: the committed images of several protected VMs in appliance memory.
//!
//! * Images are page-granular and keyed by an [`ImageId`] (a VM today; a VM's disk or a group
//!   member later). Every page is a content-addressed, immutable, refcounted *page object*:
//!   identical pages are shared within and across images (found by an xxh3 hash, always
//!   confirmed by comparing bytes). All-zero pages take no storage at all.
//! * Each image has a committed table and a staging table. The FGBI decoder writes into the
//!   staging table through [`Staging`] (a [`resilire_codec::PageTarget`]); [`Store::commit`]
//!   makes the staged epoch visible at once, [`Store::abort`] drops it. Neither can fail nor
//!   needs memory, and the committed image is never touched before commit.
//! * Page bytes live in frames from a [`FrameAllocator`] (heap boxes on the host, real machine
//!   frames in the appliance), or, for pages cold for a number of epochs, zstd-compressed on the
//!   heap ([`Store::compress_cold`]).
//! * Memory is accounted against the budget given at creation, and every operation that needs
//!   memory checks the budget *before* changing anything: refusal ([`StoreError::OutOfMemory`])
//!   leaves the store exactly as it was. See [`Store::memory_used`] for what is counted.
//! * [`Store::page_directory`] tells, per pfn, where a committed page's bytes live, so that the
//!   appliance can hand dom0 a directory of frame numbers at resume time.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use resilire_codec::{PageTarget, PAGE_SIZE};
use xxhash_rust::xxh3::xxh3_64;

/// Identity of an image held by the store (a protected VM's memory; later also disks).
pub type ImageId = u64;

/// Provider of page frames. On the host [`HeapFrames`] uses boxed arrays; in the appliance an
/// implementation hands out real machine frames (whose numbers go into the page directory).
pub trait FrameAllocator {
    /// A handle to one 4 KiB frame.
    type Frame: Copy;
    /// A fresh frame (content unspecified), or `None` when none is left.
    fn alloc(&mut self) -> Option<Self::Frame>;
    /// Gives a frame back.
    fn free(&mut self, frame: Self::Frame);
    /// The frame's bytes.
    fn data(&self, frame: Self::Frame) -> &[u8; PAGE_SIZE];
    /// The frame's bytes, writable.
    fn data_mut(&mut self, frame: Self::Frame) -> &mut [u8; PAGE_SIZE];
    /// The frame number published in the page directory.
    fn frame_number(&self, frame: Self::Frame) -> u64;
}

/// Host frame allocator: boxed pages in a slab; frame numbers are slab indices.
#[derive(Debug, Default)]
pub struct HeapFrames {
    frames: Vec<Box<[u8; PAGE_SIZE]>>,
    free: Vec<u32>,
    limit: Option<usize>,
}

impl HeapFrames {
    /// An allocator without a frame limit (the store's budget still applies).
    pub fn new() -> Self {
        Self::default()
    }
    /// An allocator that hands out at most `frames` frames (simulates a fixed frame pool).
    pub fn with_limit(frames: usize) -> Self {
        HeapFrames {
            limit: Some(frames),
            ..Self::default()
        }
    }
    /// Frames currently handed out.
    pub fn in_use(&self) -> usize {
        self.frames.len() - self.free.len()
    }
}

impl FrameAllocator for HeapFrames {
    type Frame = u32;
    fn alloc(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.limit.is_some_and(|l| self.frames.len() >= l)
            || self.frames.len() >= u32::MAX as usize
        {
            return None;
        }
        self.frames.push(Box::new([0u8; PAGE_SIZE]));
        Some((self.frames.len() - 1) as u32)
    }
    fn free(&mut self, frame: u32) {
        self.free.push(frame);
    }
    fn data(&self, frame: u32) -> &[u8; PAGE_SIZE] {
        &self.frames[frame as usize]
    }
    fn data_mut(&mut self, frame: u32) -> &mut [u8; PAGE_SIZE] {
        &mut self.frames[frame as usize]
    }
    fn frame_number(&self, frame: u32) -> u64 {
        u64::from(frame)
    }
}

/// Why the store refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The budget (or the frame allocator) cannot cover the request; nothing was changed.
    OutOfMemory {
        /// Bytes the request needed.
        needed: usize,
        /// Bytes left in the budget.
        available: usize,
    },
    /// No image with this id.
    NoSuchImage(ImageId),
    /// An image with this id exists already.
    ImageExists(ImageId),
    /// A page number beyond the image.
    PfnOutOfRange {
        /// The image.
        image: ImageId,
        /// The page number.
        pfn: u64,
    },
    /// A stored compressed page failed to decompress (internal corruption; should not happen).
    Corrupt,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::OutOfMemory { needed, available } => write!(
                f,
                "checkpoint store out of memory: needs {needed} bytes, {available} left in the budget"
            ),
            StoreError::NoSuchImage(id) => write!(f, "no image {id}"),
            StoreError::ImageExists(id) => write!(f, "image {id} exists already"),
            StoreError::PfnOutOfRange { image, pfn } => write!(f, "page {pfn} beyond image {image}"),
            StoreError::Corrupt => write!(f, "stored compressed page is corrupt"),
        }
    }
}

/// Where the bytes of one committed page live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageLocation {
    /// An all-zero page: no storage (the appliance maps a shared zero frame).
    Zero,
    /// In this frame (the allocator's frame number).
    Frame(u64),
    /// Compressed in the heap: call [`Store::materialize`] first to get frames.
    Compressed,
}

/// Counters describing the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live page objects.
    pub page_objects: u64,
    /// Page objects held in frames.
    pub frames: u64,
    /// Page objects held compressed.
    pub compressed_pages: u64,
    /// Bytes of compressed page data.
    pub compressed_bytes: u64,
    /// References to page objects from committed and staging tables (shared pages count once
    /// per reference).
    pub references: u64,
}

/// Reference to a page object in a page table.
type PageRef = u32;
/// The all-zero page (no object).
const ZERO: PageRef = u32::MAX;
/// No staged page for this pfn.
const NONE: PageRef = u32::MAX - 1;
/// Largest number of page objects.
const MAX_OBJECTS: usize = (u32::MAX - 2) as usize;

/// Fixed charge per image for its entry in the image map (tree node share and bookkeeping).
pub const IMAGE_OVERHEAD: usize = 128;
/// Charge per page of an image: committed and staging tables (4 bytes each) and the staged-pfn
/// list (4 bytes).
pub const IMAGE_BYTES_PER_PAGE: usize = 12;
/// Compress a cold page only if it shrinks to at most this many bytes.
pub const COMPRESS_MAX: usize = PAGE_SIZE / 2;

enum Content<F> {
    Free,
    Frame(F),
    Packed(Box<[u8]>),
}

struct Object<F> {
    refs: u32,
    hash: u64,
    indexed: bool,
    born: u64,
    content: Content<F>,
}

struct Image {
    committed: Vec<PageRef>,
    staged: Vec<PageRef>,
    staged_pfns: Vec<u32>,
    committed_epoch: Option<u64>,
}

/// Page objects, frames and accounting (everything but the image tables).
struct Core<A: FrameAllocator> {
    alloc: A,
    budget: usize,
    used: usize,
    objects: Vec<Object<A::Frame>>,
    free_objects: Vec<u32>,
    by_hash: hashbrown::HashMap<u64, u32>,
    clock: u64,
    scratch: Box<[u8; PAGE_SIZE]>,
    scratch_obj: Option<u32>,
}

/// The checkpoint store. See the crate documentation.
pub struct Store<A: FrameAllocator> {
    core: Core<A>,
    images: BTreeMap<ImageId, Image>,
}

impl<A: FrameAllocator> fmt::Debug for Store<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("budget", &self.core.budget)
            .field("used", &self.core.used)
            .field("images", &self.images.len())
            .finish()
    }
}

fn is_zero(p: &[u8; PAGE_SIZE]) -> bool {
    p.chunks_exact(8)
        .all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
}

impl<A: FrameAllocator> Core<A> {
    fn available(&self) -> usize {
        self.budget - self.used
    }

    fn need(&self, bytes: usize) -> Result<(), StoreError> {
        if bytes > self.available() {
            Err(StoreError::OutOfMemory {
                needed: bytes,
                available: self.available(),
            })
        } else {
            Ok(())
        }
    }

    /// Bytes of page `r` into `out` (`offset..offset+out.len()` of the page).
    fn read(&mut self, r: PageRef, offset: usize, out: &mut [u8]) -> Result<(), StoreError> {
        if r == ZERO {
            out.fill(0);
            return Ok(());
        }
        let end = offset + out.len();
        let obj = self.objects.get(r as usize).ok_or(StoreError::Corrupt)?;
        match &obj.content {
            Content::Frame(f) => {
                out.copy_from_slice(&self.alloc.data(*f)[offset..end]);
                Ok(())
            }
            Content::Packed(_) => {
                self.unpack(r)?;
                out.copy_from_slice(&self.scratch[offset..end]);
                Ok(())
            }
            Content::Free => Err(StoreError::Corrupt),
        }
    }

    /// Decompresses packed object `r` into the scratch page (cached).
    fn unpack(&mut self, r: u32) -> Result<(), StoreError> {
        if self.scratch_obj == Some(r) {
            return Ok(());
        }
        let Some(Object {
            content: Content::Packed(z),
            ..
        }) = self.objects.get(r as usize)
        else {
            return Err(StoreError::Corrupt);
        };
        let mut dec = ruzstd::decoding::FrameDecoder::new();
        let n = dec
            .decode_all(z, &mut self.scratch[..])
            .map_err(|_| StoreError::Corrupt)?;
        if n != PAGE_SIZE {
            self.scratch_obj = None;
            return Err(StoreError::Corrupt);
        }
        self.scratch_obj = Some(r);
        Ok(())
    }

    fn equals(&mut self, r: u32, data: &[u8; PAGE_SIZE]) -> Result<bool, StoreError> {
        match &self.objects[r as usize].content {
            Content::Frame(f) => Ok(self.alloc.data(*f) == data),
            Content::Packed(_) => {
                self.unpack(r)?;
                Ok(*self.scratch == *data)
            }
            Content::Free => Ok(false),
        }
    }

    /// Bytes the object table grows by if one more object is needed now.
    fn object_growth(&self) -> usize {
        if !self.free_objects.is_empty() || self.objects.len() < self.objects.capacity() {
            0
        } else {
            let cap = self.objects.capacity();
            (cap.max(64)) * core::mem::size_of::<Object<A::Frame>>()
        }
    }

    /// Upper bound of the bytes the hash index grows by on one insertion.
    fn index_growth(&self) -> usize {
        if self.by_hash.len() < self.by_hash.capacity() {
            0
        } else {
            // hashbrown doubles its buckets; entry + control byte per bucket, plus a group.
            let buckets = (self.by_hash.capacity() + 1).next_power_of_two().max(4) * 2;
            buckets * (core::mem::size_of::<(u64, u32)>() + 1) + 32
        }
    }

    /// A reference to a page object holding `data` (shared if one exists). Takes one reference.
    fn intern(&mut self, data: &[u8; PAGE_SIZE]) -> Result<PageRef, StoreError> {
        if is_zero(data) {
            return Ok(ZERO);
        }
        let h = xxh3_64(data);
        let found = self.by_hash.get(&h).copied();
        if let Some(r) = found {
            if self.equals(r, data)? {
                self.objects[r as usize].refs += 1;
                return Ok(r);
            }
        }
        // A new object: check every cost first.
        let index_it = found.is_none();
        let growth = self.object_growth() + if index_it { self.index_growth() } else { 0 };
        self.need(PAGE_SIZE + growth)?;
        if self.objects.len() >= MAX_OBJECTS && self.free_objects.is_empty() {
            return Err(StoreError::OutOfMemory {
                needed: PAGE_SIZE,
                available: 0,
            });
        }
        let frame = self.alloc.alloc().ok_or(StoreError::OutOfMemory {
            needed: PAGE_SIZE,
            available: self.available(),
        })?;
        self.alloc.data_mut(frame).copy_from_slice(data);
        let obj = Object {
            refs: 1,
            hash: h,
            indexed: index_it,
            born: self.clock,
            content: Content::Frame(frame),
        };
        let r = match self.free_objects.pop() {
            Some(r) => {
                self.objects[r as usize] = obj;
                r
            }
            None => {
                if self.objects.len() == self.objects.capacity() {
                    let before = self.objects.capacity();
                    self.objects.reserve_exact(before.max(64));
                    self.used += (self.objects.capacity() - before)
                        * core::mem::size_of::<Object<A::Frame>>();
                }
                self.objects.push(obj);
                (self.objects.len() - 1) as u32
            }
        };
        if index_it {
            let before = self.by_hash.allocation_size();
            self.by_hash.insert(h, r);
            self.used += self.by_hash.allocation_size() - before;
        }
        self.used += PAGE_SIZE;
        Ok(r)
    }

    fn decref(&mut self, r: PageRef) {
        if r == ZERO || r == NONE {
            return;
        }
        let obj = &mut self.objects[r as usize];
        obj.refs -= 1;
        if obj.refs > 0 {
            return;
        }
        let content = core::mem::replace(&mut obj.content, Content::Free);
        let (hash, indexed) = (obj.hash, obj.indexed);
        match content {
            Content::Frame(f) => {
                self.alloc.free(f);
                self.used -= PAGE_SIZE;
            }
            Content::Packed(z) => self.used -= z.len(),
            Content::Free => {}
        }
        if indexed {
            self.by_hash.remove(&hash);
        }
        if self.scratch_obj == Some(r) {
            self.scratch_obj = None;
        }
        self.free_objects.push(r);
    }
}

impl<A: FrameAllocator> Store<A> {
    /// A store using `alloc` for frames and at most `budget` bytes in all (frames, compressed
    /// pages and metadata).
    pub fn new(alloc: A, budget: usize) -> Self {
        let mut core = Core {
            alloc,
            budget,
            used: 0,
            objects: Vec::new(),
            free_objects: Vec::new(),
            by_hash: hashbrown::HashMap::new(),
            clock: 0,
            scratch: Box::new([0u8; PAGE_SIZE]),
            scratch_obj: None,
        };
        core.used = PAGE_SIZE.min(budget);
        Store {
            core,
            images: BTreeMap::new(),
        }
    }

    /// The budget given at creation.
    pub fn budget(&self) -> usize {
        self.core.budget
    }

    /// Bytes charged against the budget: frames in use (4096 each), compressed page bytes, the
    /// object table's and the hash index's allocated capacity, image tables
    /// ([`IMAGE_BYTES_PER_PAGE`] per page plus [`IMAGE_OVERHEAD`]), and the store's scratch
    /// page. Not charged: the free-object list (bounded by the object table) and the transient
    /// buffers of the zstd (de)compressor during one call.
    pub fn memory_used(&self) -> usize {
        self.core.used
    }

    /// The frame allocator.
    pub fn allocator(&self) -> &A {
        &self.core.alloc
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let mut s = StoreStats::default();
        for o in &self.core.objects {
            match &o.content {
                Content::Free => continue,
                Content::Frame(_) => s.frames += 1,
                Content::Packed(z) => {
                    s.compressed_pages += 1;
                    s.compressed_bytes += z.len() as u64;
                }
            }
            s.page_objects += 1;
            s.references += u64::from(o.refs);
        }
        s
    }

    /// Adds an all-zero image of `page_count` pages.
    pub fn add_image(&mut self, id: ImageId, page_count: u64) -> Result<(), StoreError> {
        if self.images.contains_key(&id) {
            return Err(StoreError::ImageExists(id));
        }
        let pages = usize::try_from(page_count)
            .ok()
            .filter(|&p| p <= u32::MAX as usize)
            .ok_or(StoreError::OutOfMemory {
                needed: usize::MAX,
                available: self.core.available(),
            })?;
        let cost = pages
            .checked_mul(IMAGE_BYTES_PER_PAGE)
            .and_then(|c| c.checked_add(IMAGE_OVERHEAD))
            .unwrap_or(usize::MAX);
        self.core.need(cost)?;
        let image = Image {
            committed: vec![ZERO; pages],
            staged: vec![NONE; pages],
            staged_pfns: Vec::with_capacity(pages),
            committed_epoch: None,
        };
        self.core.used += cost;
        self.images.insert(id, image);
        Ok(())
    }

    /// Removes an image and frees what only it used.
    pub fn remove_image(&mut self, id: ImageId) -> Result<(), StoreError> {
        self.abort(id)?;
        let image = self.images.remove(&id).ok_or(StoreError::NoSuchImage(id))?;
        for r in image.committed {
            self.core.decref(r);
        }
        self.core.used -= image.staged.len() * IMAGE_BYTES_PER_PAGE + IMAGE_OVERHEAD;
        Ok(())
    }

    /// Ids of the images held.
    pub fn images(&self) -> impl Iterator<Item = ImageId> + '_ {
        self.images.keys().copied()
    }

    /// Number of pages of image `id`.
    pub fn page_count(&self, id: ImageId) -> Result<u64, StoreError> {
        Ok(self.image(id)?.committed.len() as u64)
    }

    /// The epoch last committed for image `id` (`None` before the first commit).
    pub fn committed_epoch(&self, id: ImageId) -> Result<Option<u64>, StoreError> {
        Ok(self.image(id)?.committed_epoch)
    }

    fn image(&self, id: ImageId) -> Result<&Image, StoreError> {
        self.images.get(&id).ok_or(StoreError::NoSuchImage(id))
    }

    /// The staging area of image `id`, for the decoder. Pages written through it stay invisible
    /// until [`Store::commit`].
    pub fn staging(&mut self, id: ImageId) -> Result<Staging<'_, A>, StoreError> {
        let image = self
            .images
            .get_mut(&id)
            .ok_or(StoreError::NoSuchImage(id))?;
        Ok(Staging {
            core: &mut self.core,
            image,
            id,
        })
    }

    /// Makes the staged epoch of image `id` visible as epoch `epoch`. Never fails for an
    /// existing image and needs no memory.
    pub fn commit(&mut self, id: ImageId, epoch: u64) -> Result<(), StoreError> {
        let image = self
            .images
            .get_mut(&id)
            .ok_or(StoreError::NoSuchImage(id))?;
        for &pfn in &image.staged_pfns {
            let p = pfn as usize;
            let new = core::mem::replace(&mut image.staged[p], NONE);
            let old = core::mem::replace(&mut image.committed[p], new);
            self.core.decref(old);
        }
        image.staged_pfns.clear();
        image.committed_epoch = Some(epoch);
        self.core.clock += 1;
        Ok(())
    }

    /// Commits several images at once (a group epoch: every member becomes visible together).
    /// Checks every id first; then each commit is infallible, so either all are committed or,
    /// on an unknown id, none.
    pub fn commit_group(&mut self, members: &[(ImageId, u64)]) -> Result<(), StoreError> {
        if let Some(&(id, _)) = members.iter().find(|(id, _)| !self.images.contains_key(id)) {
            return Err(StoreError::NoSuchImage(id));
        }
        for &(id, epoch) in members {
            self.commit(id, epoch)?;
        }
        Ok(())
    }

    /// Drops the staged epoch of image `id`; the committed image is unchanged.
    pub fn abort(&mut self, id: ImageId) -> Result<(), StoreError> {
        let image = self
            .images
            .get_mut(&id)
            .ok_or(StoreError::NoSuchImage(id))?;
        for &pfn in &image.staged_pfns {
            let r = core::mem::replace(&mut image.staged[pfn as usize], NONE);
            self.core.decref(r);
        }
        image.staged_pfns.clear();
        Ok(())
    }

    /// Reads page `pfn` of image `id`'s committed image.
    pub fn read_page(
        &mut self,
        id: ImageId,
        pfn: u64,
        out: &mut [u8; PAGE_SIZE],
    ) -> Result<(), StoreError> {
        let image = self.images.get(&id).ok_or(StoreError::NoSuchImage(id))?;
        let r = *image
            .committed
            .get(pfn as usize)
            .ok_or(StoreError::PfnOutOfRange { image: id, pfn })?;
        self.core.read(r, 0, &mut out[..])
    }

    /// Where each committed page of image `id` lives, in pfn order.
    pub fn page_directory(
        &self,
        id: ImageId,
    ) -> Result<impl Iterator<Item = PageLocation> + '_, StoreError> {
        let image = self.image(id)?;
        let core = &self.core;
        Ok(image.committed.iter().map(move |&r| {
            if r == ZERO {
                return PageLocation::Zero;
            }
            match &core.objects[r as usize].content {
                Content::Frame(f) => PageLocation::Frame(core.alloc.frame_number(*f)),
                _ => PageLocation::Compressed,
            }
        }))
    }

    /// Puts every compressed page of image `id`'s committed image back into a frame (before
    /// resume). Refuses without change if the budget cannot cover all of them.
    pub fn materialize(&mut self, id: ImageId) -> Result<(), StoreError> {
        let image = self.images.get(&id).ok_or(StoreError::NoSuchImage(id))?;
        let mut packed: Vec<u32> = image
            .committed
            .iter()
            .copied()
            .filter(|&r| {
                r != ZERO && matches!(self.core.objects[r as usize].content, Content::Packed(_))
            })
            .collect();
        packed.sort_unstable();
        packed.dedup();
        let freed: usize = packed
            .iter()
            .map(|&r| match &self.core.objects[r as usize].content {
                Content::Packed(z) => z.len(),
                _ => 0,
            })
            .sum();
        let needed = (packed.len() * PAGE_SIZE).saturating_sub(freed);
        self.core.need(needed)?;
        for r in packed {
            self.core.unpack(r)?;
            let frame = self.core.alloc.alloc().ok_or(StoreError::OutOfMemory {
                needed: PAGE_SIZE,
                available: self.core.available(),
            })?;
            let data = *self.core.scratch;
            self.core.alloc.data_mut(frame).copy_from_slice(&data);
            let old = core::mem::replace(
                &mut self.core.objects[r as usize].content,
                Content::Frame(frame),
            );
            if let Content::Packed(z) = old {
                self.core.used = self.core.used - z.len() + PAGE_SIZE;
            }
        }
        Ok(())
    }

    /// Compresses up to `max_pages` page objects that have existed for at least `min_age`
    /// commits and shrink to at most [`COMPRESS_MAX`] bytes; returns how many were compressed.
    ///
    /// Compression uses ruzstd's pure-Rust, `no_std` encoder (its "fastest" level); reading
    /// back uses ruzstd's decoder. Only memory is freed: the budget is never exceeded.
    pub fn compress_cold(&mut self, min_age: u64, max_pages: usize) -> usize {
        let mut done = 0;
        let clock = self.core.clock;
        for r in 0..self.core.objects.len() {
            if done >= max_pages {
                break;
            }
            let obj = &self.core.objects[r];
            let Content::Frame(f) = obj.content else {
                continue;
            };
            if clock.saturating_sub(obj.born) < min_age {
                continue;
            }
            let data: &[u8] = &self.core.alloc.data(f)[..];
            let z = ruzstd::encoding::compress_to_vec(
                data,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
            if z.len() > COMPRESS_MAX {
                continue;
            }
            let z = z.into_boxed_slice();
            self.core.used = self.core.used - PAGE_SIZE + z.len();
            self.core.alloc.free(f);
            self.core.objects[r].content = Content::Packed(z);
            done += 1;
        }
        done
    }
}

/// The staging area of one image: a [`PageTarget`] for the FGBI decoder.
pub struct Staging<'a, A: FrameAllocator> {
    core: &'a mut Core<A>,
    image: &'a mut Image,
    id: ImageId,
}

impl<A: FrameAllocator> fmt::Debug for Staging<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staging").field("image", &self.id).finish()
    }
}

impl<A: FrameAllocator> Staging<'_, A> {
    fn current(&self, pfn: u64) -> Result<PageRef, StoreError> {
        let p = pfn as usize;
        match self.image.staged.get(p) {
            Some(&NONE) => Ok(self.image.committed[p]),
            Some(&r) => Ok(r),
            None => Err(StoreError::PfnOutOfRange {
                image: self.id,
                pfn,
            }),
        }
    }

    /// Stages a page reference (taking over one reference).
    fn stage(&mut self, pfn: u64, r: PageRef) {
        let p = pfn as usize;
        let old = core::mem::replace(&mut self.image.staged[p], r);
        if old == NONE {
            self.image.staged_pfns.push(pfn as u32);
        } else {
            self.core.decref(old);
        }
    }
}

impl<A: FrameAllocator> PageTarget for Staging<'_, A> {
    type Error = StoreError;

    fn page_count(&self) -> u64 {
        self.image.committed.len() as u64
    }

    fn read_bytes(&mut self, pfn: u64, offset: usize, out: &mut [u8]) -> Result<(), StoreError> {
        let r = self.current(pfn)?;
        if offset + out.len() > PAGE_SIZE {
            return Err(StoreError::PfnOutOfRange {
                image: self.id,
                pfn,
            });
        }
        self.core.read(r, offset, out)
    }

    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), StoreError> {
        self.current(pfn)?;
        let r = self.core.intern(data)?;
        self.stage(pfn, r);
        Ok(())
    }

    fn write_zero_page(&mut self, pfn: u64) -> Result<(), StoreError> {
        self.current(pfn)?;
        self.stage(pfn, ZERO);
        Ok(())
    }
}

/// Re-exported so that users name one page size.
pub use resilire_codec::PAGE_SIZE as STORE_PAGE_SIZE;
