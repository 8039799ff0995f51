// kvlm serve through the official OpenAI Node.js client (the `openai` npm package, pinned by
// package-lock.json). Run by tests/server/test_openai_node.py, which installs the package into the
// build directory, starts the server and sets KVLM_URL, KVLM_KEY and KVLM_MODEL_ID.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

const baseURL = process.env.KVLM_URL + '/v1';
const model = process.env.KVLM_MODEL_ID;
const client = new OpenAI({ baseURL, apiKey: process.env.KVLM_KEY, maxRetries: 0, timeout: 60000 });
const NO_EOS = { 2: -100 }; // the test model's end-of-sequence token: generation runs to max_tokens

test('models.list', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids, [model]);
  const one = await client.models.retrieve(model);
  assert.equal(one.id, model);
  assert.equal(one.object, 'model');
});

test('chat completion, and the same text streamed (raw chunks and the strict stream helper)', async () => {
  const body = {
    model,
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Tell me a story' }],
    max_tokens: 24,
    temperature: 0,
    logit_bias: NO_EOS,
  };
  const full = await client.chat.completions.create(body);
  assert.equal(full.object, 'chat.completion');
  assert.equal(full.model, model);
  assert.equal(full.choices.length, 1);
  const ch = full.choices[0];
  assert.equal(ch.message.role, 'assistant');
  assert.equal(typeof ch.message.content, 'string');
  assert.ok(ch.message.content.length > 0);
  assert.equal(ch.finish_reason, 'length');
  assert.equal(full.usage.completion_tokens, 24);
  assert.equal(full.usage.total_tokens, full.usage.prompt_tokens + 24);

  // raw chunks
  const stream = await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let role = null;
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(role, 'assistant');
  assert.equal(text, ch.message.content);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 24);

  // the SDK's stream helper checks the event sequence and assembles the message
  const runner = client.chat.completions.stream({ ...body, stream_options: { include_usage: true } });
  const deltas = [];
  runner.on('content', (delta) => deltas.push(delta));
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.content, ch.message.content);
  assert.equal(final.choices[0].finish_reason, 'length');
  assert.equal(deltas.join(''), ch.message.content);
  assert.equal(await runner.finalContent(), ch.message.content);
});

test('chat logprobs', async () => {
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Robots' }], max_tokens: 6, temperature: 0,
    logprobs: true, top_logprobs: 2, logit_bias: NO_EOS,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, 6);
  assert.equal(content.map((e) => e.token).join(''), r.choices[0].message.content);
  for (const e of content) {
    assert.ok(e.logprob <= 0);
    assert.equal(e.top_logprobs[0].token, e.token);
    assert.equal(e.top_logprobs[0].logprob, e.logprob);
  }
});

test('completions, and the same text streamed', async () => {
  const body = { model, prompt: 'Once upon a time', max_tokens: 20, temperature: 0, logit_bias: NO_EOS };
  const full = await client.completions.create(body);
  assert.equal(full.object, 'text_completion');
  assert.equal(full.choices[0].finish_reason, 'length');
  assert.equal(full.usage.completion_tokens, 20);
  const stream = await client.completions.create({ ...body, stream: true });
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, full.choices[0].text);
  assert.equal(finish, 'length');
  // seeded sampling: same seed same text
  const a = await client.completions.create({ ...body, temperature: 1, seed: 7 });
  const b = await client.completions.create({ ...body, temperature: 1, seed: 7 });
  assert.equal(a.choices[0].text, b.choices[0].text);
});

test('structured output: response_format json_schema', async () => {
  const schema = {
    type: 'object',
    properties: { city: { type: 'string', maxLength: 10 }, unit: { enum: ['c', 'f'] } },
    required: ['city', 'unit'],
    additionalProperties: false,
  };
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Weather?' }], max_tokens: 300, temperature: 1, seed,
      response_format: { type: 'json_schema', json_schema: { name: 'weather', schema, strict: true } },
    });
    assert.equal(r.choices[0].finish_reason, 'stop');
    const v = JSON.parse(r.choices[0].message.content);
    assert.deepEqual(Object.keys(v), ['city', 'unit']);
    assert.ok(typeof v.city === 'string' && [...v.city].length <= 10 && ['c', 'f'].includes(v.unit));
  }
});

test('errors arrive as the SDK error classes', async () => {
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], temperature: 'hot' }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'temperature' &&
      e.type === 'invalid_request_error',
  );
  await assert.rejects(
    client.completions.create({ model: 'gpt-nothing', prompt: 'x' }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found',
  );
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }],
      response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'strin' } } } }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format.json_schema.schema' &&
      e.code === 'invalid_json_schema',
  );
  const wrong = new OpenAI({ baseURL, apiKey: 'not-the-key', maxRetries: 0 });
  await assert.rejects(
    wrong.completions.create({ model, prompt: 'x', max_tokens: 2 }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === 'invalid_api_key',
  );
  // a stream that fails before it starts is an error too
  await assert.rejects(
    client.chat.completions.create({ model, messages: [], stream: true }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'messages',
  );
});
