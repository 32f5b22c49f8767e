"""Segments: a rule language over customer attributes, compiled to one SQL query that also
applies the contactability rule, so the database filters and Python only decrypts a page.

rules.py       parse and validate a JSON condition (errors name the bad part: rules.all[1].op)
conditions.py  a parsed condition as a SQLAlchemy boolean expression over `profiles`
traits.py      typed predicates over the JSON `traits` column (SQLite and PostgreSQL)
audience.py    the member and stats queries: rule + addresses + consent + suppressions
members.py     pages of members: the one path that members, export and ad-hoc query go through
export.py      the whole segment as NDJSON or CSV, page by page, in constant memory
exports.py     export records: whom each export handed out, who has opted out since; retention
cursor.py      opaque keyset cursors and the limit check
store.py       saved segment definitions
schemas.py     request and response bodies (they document the OpenAPI schema)
service.py     use cases with access logging, called by the API
"""
