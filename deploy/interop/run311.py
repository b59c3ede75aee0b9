# Runs the unittest cases of the suite's client_test.py (MQTT 3.1.1) against
# HOST PORT [TEST...]. Its own __main__ hands -h and -p on to unittest.main(),
# which refuses them, so this sets the globals that __main__ would set.
# Run with the suite's interoperability/ directory on PYTHONPATH.
import logging, sys, unittest

import client_test as ct

ct.host, ct.port = sys.argv[1], int(sys.argv[2])
ct.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
ct.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
ct.nosubscribe_topics = ("test/nosubscribe",)
logging.getLogger().setLevel(logging.ERROR)
unittest.main(module=ct, argv=[sys.argv[0], "-v"] + sys.argv[3:])
