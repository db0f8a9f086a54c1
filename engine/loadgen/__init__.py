"""Launch day under load: ``flashsale loadgen`` and ``flashsale demo``.

    http.py       a lean keep-alive HTTP/1.1 client (asyncio protocol + httptools)
    profile.py    the launch-day spike (trickle, cliff, plateau until sold out, decay)
    behaviour.py  the buyer mix and the catalogue of deliberately bad requests
    buyer.py      one buyer's visit; calls.py the retry rules (503 and timeouts, same key)
    generator.py  virtual users following the spike; record.py what was asked and granted
    observe.py    the API's stats, users, reservations, the ledger, ``flashsale reconcile``
    verdict.py    judge(record, observed): every invariant of docs/API.md, a pure function
    report.py     the end-of-run report; run.py one run end to end; services.py local servers
"""
