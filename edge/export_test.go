package edge

// HooksProviding lists the ids of the broker's mochi hooks that provide
// event (mqtt.OnPublish, ...).
func (b *Broker) HooksProviding(event byte) []string {
	var ids []string
	for _, h := range b.lifecycle.GetAll() {
		if h.Provides(event) {
			ids = append(ids, h.ID())
		}
	}
	return ids
}
