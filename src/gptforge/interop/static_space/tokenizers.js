// The two gptforge tokenizers, in the browser: one token per character, and GPT-2's byte-level BPE read
// from the same gpt2.tiktoken ranks file tiktoken reads ("<base64 bytes> <rank>" per line).

export class CharTokenizer {
  constructor(chars) {
    this.chars = Array.from(chars); // code points, as Python's str indexes them
    this.ids = new Map(this.chars.map((char, id) => [char, id]));
    this.vocabSize = this.chars.length;
  }

  encode(text) {
    return Array.from(text, (char) => {
      const id = this.ids.get(char);
      if (id === undefined) {
        throw new Error(`character ${JSON.stringify(char)} is not in this model's vocabulary ` +
                        `(it knows the ${this.vocabSize} characters of its training text)`);
      }
      return id;
    });
  }

  // A decoder turns ids into text one at a time; a character model never splits a character.
  decoder() {
    return { push: (id) => this.chars[id], flush: () => "" };
  }
}

// GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, and runs of spaces.
const GPT2_PIECES = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

// bytes as a string of code points 0..255: a Map key that compares by value
function byteKey(bytes) {
  let key = "";
  for (const byte of bytes) key += String.fromCharCode(byte);
  return key;
}

export class GPT2Tokenizer {
  constructor(ranksText) {
    this.ranks = new Map(); // byte key -> rank (the token id)
    this.tokens = [];        // rank -> bytes
    for (const line of ranksText.split("\n")) {
      if (!line) continue;
      const [encoded, rank] = line.split(" ");
      const bytes = Uint8Array.from(atob(encoded), (char) => char.charCodeAt(0));
      this.ranks.set(byteKey(bytes), Number(rank));
      this.tokens[Number(rank)] = bytes;
    }
    this.vocabSize = this.tokens.length + 1; // the ranks, then <|endoftext|>
  }

  encode(text) {
    const ids = [];
    const encoder = new TextEncoder();
    for (const [piece] of text.matchAll(GPT2_PIECES)) {
      ids.push(...this.mergePiece(encoder.encode(piece)));
    }
    return ids;
  }

  // Byte-pair merging: repeatedly join the adjacent pair whose joined bytes have the lowest rank.
  mergePiece(bytes) {
    const whole = this.ranks.get(byteKey(bytes));
    if (whole !== undefined) return [whole];
    let parts = Array.from(bytes, (byte) => String.fromCharCode(byte));
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < parts.length - 1; i++) {
        const rank = this.ranks.get(parts[i] + parts[i + 1]);
        if (rank !== undefined && rank < bestRank) {
          best = i;
          bestRank = rank;
        }
      }
      if (best < 0) break;
      parts = [...parts.slice(0, best), parts[best] + parts[best + 1], ...parts.slice(best + 2)];
    }
    return parts.map((part) => this.ranks.get(part));
  }

  // Tokens may end inside a multi-byte character: the streaming decoder holds those bytes back.
  decoder() {
    const text = new TextDecoder("utf-8");
    return {
      push: (id) => text.decode(this.tokens[id] ?? new TextEncoder().encode("<|endoftext|>"), { stream: true }),
      flush: () => text.decode(),
    };
  }
}
