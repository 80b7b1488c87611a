//! Splitting documents into overlapping chunks for retrieval.
//!
//! Chunks are about `size` characters long and consecutive chunks share about `overlap`
//! characters, so a sentence cut at a boundary is still whole in one of them. Cuts prefer a
//! paragraph break, then a sentence end, then whitespace, and never split a character.

/// Splits `text` into chunks. Whitespace-only input gives no chunks.
pub fn chunk(text: &str, size: usize, overlap: usize) -> Vec<String> {
    let size = size.max(1);
    let overlap = overlap.min(size / 2);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let byte_at = |i: usize| if i >= n { text.len() } else { chars[i].0 };
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        // Skip leading whitespace.
        while start < n && chars[start].1.is_whitespace() {
            start += 1;
        }
        if start >= n {
            break;
        }
        let hard_end = (start + size).min(n);
        let end = if hard_end == n {
            n
        } else {
            best_cut(&chars, start + size / 2, hard_end).unwrap_or(hard_end)
        };
        let piece = text[byte_at(start)..byte_at(end)].trim();
        if !piece.is_empty() {
            out.push(piece.to_string());
        }
        if end >= n {
            break;
        }
        // Next chunk starts `overlap` characters before the cut, moved forward to a word start.
        let mut next = end.saturating_sub(overlap).max(start + 1);
        while next < end && !chars[next - 1].1.is_whitespace() {
            next += 1;
        }
        start = next;
    }
    out
}

/// The best cut position in `lo..=hi` (a char index to end the chunk at): after a paragraph
/// break, else after a sentence end, else at whitespace.
fn best_cut(chars: &[(usize, char)], lo: usize, hi: usize) -> Option<usize> {
    let window = lo..hi;
    let find = |pred: &dyn Fn(usize) -> bool| window.clone().rev().find(|&i| pred(i));
    find(&|i| i > 0 && chars[i].1 == '\n' && chars[i - 1].1 == '\n')
        .or_else(|| {
            find(&|i| {
                i > 0 && chars[i].1.is_whitespace() && matches!(chars[i - 1].1, '.' | '!' | '?')
            })
        })
        .or_else(|| find(&|i| chars[i].1.is_whitespace()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(chunk("  hello world  ", 100, 20), vec!["hello world"]);
        assert!(chunk("   \n ", 100, 20).is_empty());
    }

    #[test]
    fn chunks_overlap_and_cover_everything() {
        let words: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
        let text = words.join(" ");
        let chunks = chunk(&text, 200, 50);
        assert!(chunks.len() > 5);
        for c in &chunks {
            assert!(c.chars().count() <= 200, "{}", c.len());
        }
        // Every word appears, whole, in some chunk.
        for w in &words {
            assert!(
                chunks.iter().any(|c| c.split(' ').any(|x| x == w)),
                "{w} lost"
            );
        }
        // Consecutive chunks share text.
        for pair in chunks.windows(2) {
            let last_word = pair[0].split(' ').next_back().expect("word");
            assert!(pair[1].contains(last_word), "no overlap between {pair:?}");
        }
    }

    #[test]
    fn prefers_sentence_ends_and_keeps_multibyte_chars_whole() {
        let text = "Première phrase ici. Deuxième phrase là-bas, très longue ééé. Troisième.";
        let chunks = chunk(text, 40, 5);
        assert!(chunks[0].ends_with('.'), "{chunks:?}");
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')));
    }

    #[test]
    fn a_long_word_is_cut_hard_without_looping() {
        let text = "x".repeat(1000);
        let chunks = chunk(&text, 100, 30);
        assert!(chunks.len() >= 10 && chunks.len() <= 15, "{}", chunks.len());
    }
}
