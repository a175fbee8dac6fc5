#!/usr/bin/env python3
"""A scripted AI agent in the AutoGen style: the "LLM" decides on tool calls,
and the one tool, run_sql, talks to PostgreSQL *through sluice* with the
agent's own OIDC token as the password. It never holds a database password.

Usage: agent.py HOST PORT CONNECTION TOKEN TRACE_ID
"""
import sys

import psycopg2


class SqlTool:
    """The tool an AutoGen assistant would register (function calling)."""
    name = "run_sql"

    def __init__(self, host, port, connection, token, trace_id):
        self.conn = psycopg2.connect(host=host, port=port, user=connection, dbname=connection,
                                     password=token, sslmode="disable",
                                     application_name="demo-agent")
        self.conn.autocommit = True
        self.trace_id = trace_id
        self.span = 0

    def __call__(self, query):
        # sqlcommenter: the agent's W3C trace context rides along with the
        # statement, so the audit trail can say which prompt caused it.
        self.span += 1
        tagged = "%s /*traceparent='00-%s-%016x-01'*/" % (query, self.trace_id, self.span)
        cur = self.conn.cursor()
        try:
            cur.execute(tagged)
        except psycopg2.Error as e:
            return {"ok": False, "sqlstate": e.pgcode, "error": e.pgerror.strip()}
        rows = cur.fetchall() if cur.description else []
        cols = [d[0] for d in cur.description] if cur.description else []
        return {"ok": True, "columns": cols, "rows": rows, "rowcount": cur.rowcount}


# What the model "decided" to do for the prompt below, as tool calls.
PROMPT = "Summarise our customers, then clean up the orders table."
PLAN = [
    ("Look at the customers first.",
     "SELECT id, name, email, ssn, card_number, api_token FROM customers ORDER BY id"),
    ("Count the orders.", "SELECT count(*) AS orders FROM orders"),
    ("The orders table looks messy; drop it.", "DROP TABLE orders"),
    ("Then just count again.", "SELECT count(*) AS orders FROM orders"),
    # Deletes need a human: sluice holds each one until a dba decides.
    ("Remove the test order 42 instead.", "DELETE FROM orders WHERE id = 42"),
    ("And all orders of customer 2.", "DELETE FROM orders WHERE customer = 2"),
    ("Count once more.", "SELECT count(*) AS orders FROM orders"),
]


def main():
    host, port, connection, token, trace_id = sys.argv[1:6]
    tool = SqlTool(host, int(port), connection, token, trace_id)
    print("agent> prompt: %s" % PROMPT)
    print("agent> trace id: %s" % trace_id)
    for thought, sql in PLAN:
        print("\nagent> %s" % thought)
        print("agent> tool call run_sql(%r)" % sql, flush=True)
        res = tool(sql)
        if res["ok"] and not res["columns"]:
            print("tool>  done, %d row(s) affected" % res["rowcount"], flush=True)
        elif res["ok"]:
            print("tool>  columns: %s" % ", ".join(res["columns"]))
            for r in res["rows"]:
                print("tool>  %s" % (r,))
        else:
            print("tool>  REFUSED by the gateway: [%s] %s" % (res["sqlstate"], res["error"]),
                  flush=True)
    tool.conn.close()


if __name__ == "__main__":
    main()
