// agent.js - an agent's database calls through node-postgres (extended
// protocol for parameterised and named queries), as a test drives them.
// Prints one JSON object with what happened. Env: PORT, USER, TOKEN.
'use strict';
const { Client } = require('pg');

(async () => {
  const out = {};
  const c = new Client({
    host: '127.0.0.1', port: +process.env.PORT, user: process.env.USER,
    database: process.env.USER, password: process.env.TOKEN,
    application_name: 'node-agent', statement_timeout: 5000,
  });
  await c.connect();
  let r = await c.query('SELECT id, customer FROM orders WHERE id = $1', [1]);
  out.param = r.rows;
  for (const id of [1, 2]) {
    r = await c.query({ name: 'by_id', text: 'SELECT id FROM orders WHERE id = $1', values: [id] });
  }
  out.named = r.rows;
  for (const sql of ['DROP TABLE orders', 'TRUNCATE orders']) {
    try {
      await c.query(sql);
      out[sql] = 'ran';
    } catch (e) {
      out[sql] = e.code;
    }
  }
  try {
    await c.query({ text: 'DROP TABLE orders', values: [] , name: 'dropper' });
    out.named_drop = 'ran';
  } catch (e) {
    out.named_drop = e.code;
  }
  r = await c.query('SELECT count(*)::int AS n FROM orders');
  out.after = r.rows[0].n;
  await c.end();
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.log(JSON.stringify({ error: String(e && e.message), code: e && e.code }));
  process.exit(1);
});
