#!/usr/bin/env bash
# Writes the seed corpora of fuzz/corpus/<target>/ (small files; kept in the repository).
# Usage: fuzz/make_corpus.sh path/to/kvlm
set -eu
cd "$(dirname "$0")/.."
kvlm=$(realpath "${1:?path to the kvlm binary}")
models=../shared/models
out=fuzz/corpus
# fuzz/corpus/server/ holds hand-written request bodies and is left as it is
rm -rf "$out"/{gguf,session,tokenizer,chat}
mkdir -p "$out"/{gguf,session,tokenizer,chat}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# gguf: random-weight models at tiny shapes, one per architecture and a few weight types
synth() { "$kvlm" synth "$out/gguf/$1.gguf" --ctx 32 --vocab 260 "${@:2}" >/dev/null; }
synth llama-f32 --arch llama --dim 8 --layers 1 --heads 2 --ff 16 --type f32
synth llama-q4_0-untied --arch llama --dim 32 --layers 2 --heads 2 --ff 32 --type q4_0 --untied
synth qwen2-q8_0-gqa --arch qwen2 --dim 32 --layers 1 --heads 4 --kv-heads 2 --ff 32 --type q8_0
synth bitnet-b158-i2_s --arch bitnet-b1.58 --dim 128 --layers 1 --heads 2 --ff 128 --type i2_s

# session: files saved by the model fuzz_session loads, one per policy and K/V type (format v3: the
# shifted, sliding and ring ones carry a dropped-token record; the model has no sliding-window layers,
# so the local-ring fields are 0)
m=$models/llama/aidreams260K-f32.gguf
ses() {
  local name=$1; shift
  "$kvlm" run -m "$m" -n 3 --session "$tmp/$name.kvs" "$@" >/dev/null 2>&1
  cp "$tmp/$name.kvs" "$out/session/$name.kvs"
}
ses q4_0 -p "Once upon" -c 64 --page-tokens 16 -ctk q4_0 -ctv q4_0
ses q8_0-f16 -p "A robot" -c 32 --page-tokens 16 -ctk q8_0 -ctv f16
ses shift-q4_0 -p "The sun rose over the quiet hills" -n 14 -c 16 --page-tokens 16 --overflow shift -ctk q4_0 -ctv q4_0
ses sliding-q4_0 -p "Echoes of" -n 40 -c 32 --page-tokens 16 --overflow sliding --sink 2 -ctk q4_0 -ctv q4_0
ses ring-q4_0 -p "Once upon a time" -n 90 --ignore-eos -c 32 --page-tokens 16 --overflow ring -ctk q4_0 -ctv q4_0
ses empty-q4_0 -p "" -n 0 -c 32 --page-tokens 16 -ctk q4_0 -ctv q4_0 || true

# tokenizer: byte 0 = vocab (0 aidreams SPM, 1 llama SPM, 2 gpt-2 BPE, 3 deepseek-coder BPE) | 4 (parse special)
i=0
tok() { printf "\\x$(printf %02x "$1")%s" "$2" >"$out/tokenizer/$(printf %02d $i)"; i=$((i + 1)); }
for v in 0 1 2 3; do
  for s in 0 4; do
    tok $((v | s)) "Once upon a time, there was a little robot."
  done
  tok $((v | 4)) "<s>Hello</s> <|endoftext|> [INST] hi"
  tok "$v" $'  two  spaces\tand\nnewlines\r\n'
  tok "$v" $'caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 123456 3.14'
  tok "$v" 'int main(void) { return x->y[2] != 0; }'
done

# chat: template NUL mode NUL role NUL content ...
c=0
chat() {
  local tmpl=$1 mode=$2; shift 2
  { printf '%s\0' "$tmpl"; printf "\\x$(printf %02x "$mode")\\0"; for f in "$@"; do printf '%s\0' "$f"; done; } \
    >"$out/chat/$(printf %02d $c)"
  c=$((c + 1))
}
chat "{% for m in messages %}<|im_start|>{{ m['role'] }}" 128 system "Be brief." user "Hi there" assistant "Hello!"
chat "<|start_header_id|>{{ role }}<|end_header_id|>" 128 user "  padded  "
chat "<|assistant|> {{ content }}<|end|>" 0 user "What is 2+2?" assistant "4"
chat "[INST] <<SYS>> {{ system }}" 128 system "You help." user "Hello" assistant "Hi" user "Again"
chat "[INST] {{ user }} [/INST]" 0 user "one" assistant "two"
chat "{{ 'Assistant: ' + message['content'] + '<|eot_id|>' }}" 128 user "hey"
chat "" 3 user "plain named chatml"
chat "unknown" 8 user "no such format"
du -sh "$out" >&2
