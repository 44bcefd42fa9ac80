"""What several stages need of an echo frame: its codec, the ultrasound sector, the colour maps and colour bar,
and the flow-mask labels. Knows no Kafka and no stage; stages depend on it, never on each other."""
